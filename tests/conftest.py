import os
import zlib

import pytest
import torch

# Triton kernels run under the interpreter on a CPU-only machine; set it before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def gen():
    """A fresh, seeded generator per test: reproducible, but never the same data across tests by accident."""
    return torch.Generator().manual_seed(zlib.crc32(os.environ.get("PYTEST_CURRENT_TEST", "").encode()))


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """The CPU stands in for an sm90 CUDA device (tests/fake_gpu.py); yields the temporary folder."""
    from fake_gpu import install

    from runtime import tuning
    install(monkeypatch, tmp_path)
    yield tmp_path
    tuning._load_for.cache_clear()
