"""Triton kernels of the QTIP family (CPU: TRITON_INTERPRET=1, set by conftest).

The template decodes the core trellis matrix What (both layouts, codes HYB / 1MAD / 3INST). QTIP's weight is
W = diag(SV) H_N What H_K diag(SU) with full-dimension normalized Hadamards; the spec lists only the sign
transforms (ir.Transform's Hadamard needs a fixed power-of-two block size, and the spec is built per options,
not per shape), so the generated entry point does not apply H_K / H_N. `_FullRotation` is the documented
workaround: it applies SU and H_K to x, runs the generated entry point with unit signs (so the kernel computes
x' @ What^T), then applies H_N and SV, and adds the bias after the rotation. The check is the harness's
x @ ir.dequantize(W).T in float64 (tests/kernel_harness.check_kernel, NaN-prefilled output).
"""
import pytest
import torch

import ir
from ir.formats.qtip import decode_tiles
from ir.hadamard import block_hadamard
from ir.synthetic import synthetic_quantized
from kernel_harness import REL_TOL, check_kernel, kernel_module

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float16, torch.bfloat16)
GEMV = ir.KernelConfig(block_m=4, block_n=16, block_k=32, split_k=2, num_warps=4, num_stages=1)
GEMM = ir.KernelConfig(block_m=16, block_n=16, block_k=32, split_k=1, num_warps=4, num_stages=1)

# options covering both layouts, all three codes, K = 2, 3 (words straddled by states), 4 and HYB V=1
VARIANTS = [dict(), dict(K=3), dict(K=4), dict(code="hyb", V=1), dict(code="hyb", V=2, Q=8),
            dict(code="1mad"), dict(code="3inst", K=3)]
VARIANT_IDS = ["-".join(f"{k}{v}" for k, v in o.items()) or "default" for o in VARIANTS]


class _FullRotation:
    """y = SV * H_N((H_K(SU * x)) @ What^T) + bias around a generated module whose kernel computes What."""

    def __init__(self, module):
        self.module = module

    def run(self, x, tensors, N, bias=None, out=None):
        K = x.shape[-1]
        xr = block_hadamard(x.float() * tensors["SU"].float(), K).to(x.dtype)
        core = dict(tensors, SU=torch.ones_like(tensors["SU"]), SV=torch.ones_like(tensors["SV"]))
        y = self.module.run(xr, core, N).float()
        y = block_hadamard(y, N) * tensors["SV"].float()
        if bias is not None:
            y = y + bias.float()
        out.copy_(y.to(out.dtype))
        return out


def _check_all(qt, gen, Ms=(1, 3, 33)):
    N, K = qt.shape
    for M in Ms:
        family, cfg = ("gemv", GEMV) if M <= 4 else ("gemm", GEMM)
        mod = _FullRotation(kernel_module(qt.spec, family, M, N, K, cfg))
        for dtype in DTYPES:
            err = check_kernel(mod, qt, M, dtype, gen, bias=(M == 3), device=DEVICE)
            assert err < REL_TOL[dtype], f"{qt.spec.description} M={M} {dtype}: rel err {err:.2e}"


def test_registered_qtip_encoded(gen):
    """The registered default (HYB K=2 V=2 Q=9, kernel layout) on weights from the Viterbi encoder."""
    spec = ir.get_format("qtip")
    qt = ir.quantize(spec, torch.randn(32, 64, generator=gen) * 0.05)
    _check_all(qt, gen)


@pytest.mark.parametrize("opts", VARIANTS, ids=VARIANT_IDS)
def test_qtip_variants_synthetic(opts, gen):
    """QtipCodec.synthetic (random words: every bit stream is a valid tail-biting path), N=32, K=64;
    M=3 (gemv with bias) is covered by the registered format's test."""
    qt = synthetic_quantized(ir.get_format("qtip", **opts), 32, 64, seed=7)
    assert torch.isfinite(ir.dequantize(qt)).all()
    _check_all(qt, gen, Ms=(1, 33))


@pytest.mark.parametrize("opts", [dict(), dict(code="3inst")], ids=["kernel_layout", "tile_layout"])
def test_core_tile_is_the_trellis_matrix(opts):
    """With unit signs and x = I, the generated entry point returns What^T exactly (fp32 math, fp16 rounding)."""
    spec = ir.get_format("qtip", **opts)
    qt = synthetic_quantized(spec, 32, 64, seed=3)
    core = dict(qt.tensors, SU=torch.ones(64, dtype=torch.float16), SV=torch.ones(32))
    mod = kernel_module(spec, "gemm", 64, 32, 64, GEMM)
    y = mod.run(torch.eye(64, dtype=torch.float16), core, 32).float()
    What = decode_tiles(spec, qt.tensors["trellis"], 32, 64, qt.tensors.get("tlut"))
    assert torch.equal(y, What.t().half().float())
