"""What machine we are on: the header the tuning database and benchmark results carry."""
from __future__ import annotations

import functools
import importlib.metadata

import torch

from codegen import __version__
from codegen.arch import arch_of_capability
from codegen.env import template_hash


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=4)
def machine_header(device_index: int = 0) -> dict:
    """GPU name (nvidia-ml-py, falling back to torch), capability, driver, CUDA, torch, triton, TVM, quantcc
    versions and the template hash. Needs CUDA."""
    if not torch.cuda.is_available():
        raise RuntimeError("machine_header() needs a CUDA device; on the CPU kernels run under TRITON_INTERPRET=1 "
                           "and there is nothing to tune")
    name, driver = torch.cuda.get_device_name(device_index), None
    try:
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        name = pynvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else name
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
    except Exception:  # nvidia-ml-py missing or no NVML: torch's name is still right
        pass
    major, minor = torch.cuda.get_device_capability(device_index)
    import triton
    return {
        "gpu": name, "capability": f"{major}.{minor}", "arch": arch_of_capability(major, minor), "driver": driver,
        "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton.__version__,
        "tvm": _version("apache-tvm"), "quantcc": __version__, "template_hash": template_hash(),
    }
