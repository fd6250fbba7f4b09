"""pytest configuration for the GPU benchmarks in bench/ (`pytest bench/ --benchmark-autosave`, then
`pytest bench/ --benchmark-compare --benchmark-compare-fail=median:5%`; `--bench-cases gptq:4096:4096:1,...`
picks the kernel cases). CI does not collect bench/ (its testpaths are tests/); without CUDA every test here
is skipped."""
import os

import pytest
import torch

if not torch.cuda.is_available():  # set before triton is imported, like tests/conftest.py
    os.environ.setdefault("TRITON_INTERPRET", "1")


DEFAULT_CASES = ("gptq:4096:4096:1", "gptq:8192:28672:1", "gptq:8192:28672:16", "gptq:8192:28672:128",
                 "bnb_nf4:8192:28672:1", "int2_g64_asym:8192:28672:1", "w8a8_static:8192:28672:128")


def pytest_addoption(parser):
    parser.addoption("--bench-cases", default=",".join(DEFAULT_CASES),
                     help="comma-separated FORMAT:N:K:M kernel cases for bench/test_bench_kernels.py")


def pytest_generate_tests(metafunc):
    if {"name", "N", "K", "M"} <= set(metafunc.fixturenames):
        cases = []
        for item in metafunc.config.getoption("--bench-cases").split(","):
            name, N, K, M = item.strip().split(":")
            cases.append((name, int(N), int(K), int(M)))
        metafunc.parametrize("name,N,K,M", cases, ids=[f"{n}-{N}x{K}-M{M}" for n, N, K, M in cases])


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="kernel benchmarks need a CUDA GPU")
    for item in items:
        if item.fspath is not None and os.path.dirname(str(item.fspath)) == os.path.dirname(__file__):
            item.add_marker(skip)
