"""Shared helpers for kernel tests: legal small shapes per format, rendering, checking against the reference."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pytest
import torch

from codegen.plan import lower
from codegen.triton_backend import render_triton
from ir import KernelConfig
from ir.reference import reference_matmul
from runtime.loader import load_kernel_module

_TMP = Path(tempfile.mkdtemp(prefix="quantcc_test_kernels_"))

# dtype-aware tolerance on ||y - ref|| / ||ref||: fp16 keeps ~11 bits, bf16 ~8; the decoded tile is
# rounded to the activation dtype before tl.dot in the gemm family.
REL_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def small_problem(spec) -> tuple[int, int, KernelConfig, KernelConfig]:
    """(N, K, gemv config, gemm config) with N, K legal for the spec and not multiples of the tiles."""
    km, nm = spec.k_multiple, spec.n_multiple
    K = 3 * km if km >= 32 else km * math.ceil(96 / km)
    N = 3 * nm if nm >= 16 else nm * math.ceil(40 / nm)
    for t in spec.transforms:  # whole-dimension Hadamards need power-of-two dimensions
        if t.kind == "hadamard" and t.size == 0:
            if t.side == "input":
                K = _pow2_at_least(max(km, 128))
            else:
                N = _pow2_at_least(max(nm, 32))
    block_k = min(256, _pow2_at_least(K) // 2) if K % 64 == 0 else 64
    block_k = max(block_k, 32)
    gemv = KernelConfig(block_m=4, block_n=16, block_k=block_k, split_k=2 if K >= 2 * block_k else 1,
                        num_warps=4, num_stages=1)
    gemm = KernelConfig(block_m=16, block_n=16, block_k=block_k, split_k=1, num_warps=4, num_stages=1)
    return N, K, gemv, gemm


def device_or_skip() -> str:
    """Where a generated module's launches can run here: "cuda" on a GPU machine (no interpreter there), else
    "cpu" under TRITON_INTERPRET=1; skips the test otherwise."""
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    return "cpu"


def kernel_module(spec, family: str, M: int, N: int, K: int, config: KernelConfig, arch: str = "sm90"):
    plan = lower(spec, M, N, K, config, arch, family=family)
    path = _TMP / f"{plan.name}.py"
    if not path.exists():
        path.write_text(render_triton(plan))
    return load_kernel_module(path)


def check_kernel(module, qt, M: int, dtype: torch.dtype, gen: torch.Generator, bias: bool = False,
                 device: str = "cpu", x: torch.Tensor | None = None) -> float:
    """Run the kernel on NaN-prefilled output and return ||y - ref|| / ||ref|| (ref: ir.reference).
    x defaults to fresh Gaussian activations."""
    N, K = qt.shape
    x = (torch.randn(M, K, generator=gen) * 0.5 if x is None else x).to(dtype)
    b = (torch.randn(N, generator=gen) * 0.1).to(dtype) if bias else None
    ref = reference_matmul(qt, x) + (b.to(torch.float64) if bias else 0.0)
    out = torch.full((M, N), float("nan"), dtype=dtype, device=device)
    tensors = {k: v.to(device) for k, v in qt.tensors.items()}
    y = module.run(x.to(device), tensors, N, bias=b.to(device) if bias else None, out=out)
    assert y.data_ptr() == out.data_ptr()
    y = y.cpu().to(torch.float64)
    assert not torch.isnan(y).any(), "kernel left unwritten (NaN) outputs"
    return ((y - ref).norm() / ref.norm().clamp_min(1e-12)).item()
