"""Every environment knob quantcc reads, in one place (read at call time, never at import).

QUANTCC_CACHE_DIR   where generated kernels are cached (default ~/.cache/quantcc)
QUANTCC_DEBUG       1: log kernel names, template names and spec keys as kernels are built and loaded
QUANTCC_FORCE_REFERENCE  1: QuantLinear uses the reference decode + matmul even on CUDA (debugging)
QUANTCC_TVM_ARTIFACTS    path1:path2: prebuilt TVM artifact folders QuantLinear may dispatch to
                         (runtime/tvm_artifacts.py; runtime.use_tvm_artifacts registers folders in code)
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("QUANTCC_CACHE_DIR", Path.home() / ".cache" / "quantcc"))


def debug() -> bool:
    return os.environ.get("QUANTCC_DEBUG", "0") == "1"


def force_reference() -> bool:
    """QUANTCC_FORCE_REFERENCE=1: QuantLinear runs the reference decode + matmul even where a generated
    kernel exists (to tell a kernel bug from a model bug)."""
    return os.environ.get("QUANTCC_FORCE_REFERENCE", "0") == "1"


def tvm_artifacts() -> str:
    """QUANTCC_TVM_ARTIFACTS=path1:path2 (os.pathsep-separated): folders written by `python -m codegen build
    FORMAT --backend tvm`, whose kernels QuantLinear may run (runtime/tvm_artifacts.py); empty: none."""
    return os.environ.get("QUANTCC_TVM_ARTIFACTS", "")
