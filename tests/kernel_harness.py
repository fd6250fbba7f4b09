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


def _f16(bits: int) -> float:
    return torch.tensor([bits & 0xFFFF], dtype=torch.int32).to(torch.int16).view(torch.float16).item()


def _f16_bits(v: float) -> int:
    """v rounded once to fp16 (nearest even), as its 16 bits."""
    return torch.tensor([v], dtype=torch.float64).to(torch.float16).view(torch.int16).item() & 0xFFFF


def _f32_bits(v) -> int:
    """v (a float or a float32 tensor of one element) as float32 bits."""
    return torch.as_tensor([v], dtype=torch.float32).view(torch.int32).item() & 0xFFFFFFFF


def run_ptx(asm: str, regs: dict[str, int]) -> dict[str, int]:
    """Execute the straight-line PTX of an inline-asm block (and/shr/shl/mul/prmt/lop3/mov/cvt on .b32/.b16
    registers, fp16x2 mul/fma/add with one rounding, add.f32) for 32-bit inputs `regs` ({"$8": v, ...}) and
    return every register after it: the CPU twin of the GPU-only paths (CI has no GPU to run them)."""
    regs = {k: v & 0xFFFFFFFF for k, v in regs.items()}

    def val(tok):
        return regs[tok] if tok in regs else int(tok, 0) & 0xFFFFFFFF

    def prmt(a, b, c):
        src = (b << 32) | a
        out = 0
        for i in range(4):
            sel = (c >> (4 * i)) & 0xF
            byte = (src >> (8 * (sel & 7))) & 0xFF
            if sel & 8:  # sign-replicate mode
                byte = 0xFF if byte & 0x80 else 0
            out |= byte << (8 * i)
        return out

    def lop3(a, b, c, lut):
        return sum(((lut >> ((((a >> i) & 1) << 2) | (((b >> i) & 1) << 1) | ((c >> i) & 1))) & 1) << i
                   for i in range(32))

    def f16x2(fn, *ops):  # lane by lane in float64 (exact for fp16 operands), rounded once to fp16
        return sum(_f16_bits(fn(*(_f16(o >> (16 * h)) for o in ops))) << (16 * h) for h in range(2))

    def f32(bits):
        return torch.tensor([bits], dtype=torch.int64).to(torch.int32).view(torch.float32)

    for stmt in asm.replace("{", " { ").replace("}", " } ").split(";"):
        stmt = " ".join(stmt.split()).strip("{} ")
        if not stmt or stmt.startswith(".reg"):
            continue
        op, rest = stmt.split(" ", 1)
        if op == "mov.b32" and "}" in rest:  # mov.b32 {lo, hi}, src
            halves, src = rest.split("}")
            lo, hi = (h.strip(" {,") for h in halves.split(","))
            v = val(src.strip(" ,"))
            regs[lo], regs[hi] = v & 0xFFFF, v >> 16
            continue
        d, *args = (a.strip() for a in rest.split(","))
        v = [val(a) for a in args]
        regs[d] = {
            "mov.b32": lambda: v[0],
            "and.b32": lambda: v[0] & v[1],
            "shr.u32": lambda: v[0] >> v[1],
            "shl.b32": lambda: (v[0] << v[1]) & 0xFFFFFFFF,
            "mul.hi.u32": lambda: (v[0] * v[1]) >> 32,
            "mul.lo.u32": lambda: (v[0] * v[1]) & 0xFFFFFFFF,
            "mad.lo.u32": lambda: (v[0] * v[1] + v[2]) & 0xFFFFFFFF,
            "prmt.b32": lambda: prmt(*v),
            "lop3.b32": lambda: lop3(*v),
            "mul.rn.f16x2": lambda: f16x2(lambda a, b: a * b, *v),
            "fma.rn.f16x2": lambda: f16x2(lambda a, b, c: a * b + c, *v),
            "add.rn.f16x2": lambda: f16x2(lambda a, b: a + b, *v),
            "add.f32": lambda: _f32_bits((f32(v[0]) + f32(v[1])).item()),
            "cvt.f32.f16": lambda: _f32_bits(_f16(v[0])),
        }[op]()
    return regs
