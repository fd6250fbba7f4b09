"""Triton kernels of the QTIP family (CPU: TRITON_INTERPRET=1, set by conftest).

The template decodes the core trellis matrix What (both layouts, codes HYB / 1MAD / 3INST). QTIP's weight is
W = diag(SV) H_N What H_K diag(SU) with whole-dimension normalized Hadamards: the spec lists them as online
transforms (signs SU, Hadamard size 0 on the input side; Hadamard size 0, signs SV on the output side) and the
generated entry point applies them around the kernel, the bias after the output transforms. The check is the
harness's x @ ir.dequantize(W).T in float64 (tests/kernel_harness.check_kernel, NaN-prefilled output).
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


def _check_all(qt, gen, Ms=(1, 3, 33)):
    N, K = qt.shape
    for M in Ms:
        family, cfg = ("gemv", GEMV) if M <= 4 else ("gemm", GEMM)
        mod = kernel_module(qt.spec, family, M, N, K, cfg)
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
    """With unit signs and x = I, the generated entry point returns H_N(H_K @ What^T): the decoded core is the
    trellis matrix (float64 check at fp16 tolerance; the rotations themselves are fp32)."""
    spec = ir.get_format("qtip", **opts)
    qt = synthetic_quantized(spec, 32, 64, seed=3)
    core = dict(qt.tensors, SU=torch.ones(64, dtype=torch.float16), SV=torch.ones(32))
    mod = kernel_module(spec, "gemm", 64, 32, 64, GEMM)
    y = mod.run(torch.eye(64, dtype=torch.float16), core, 32).float()
    What = decode_tiles(spec, qt.tensors["trellis"], 32, 64, qt.tensors.get("tlut")).double()
    expected = block_hadamard(block_hadamard(torch.eye(64, dtype=torch.float64), 64) @ What.t(), 32)
    assert ((y.double() - expected).norm() / expected.norm()).item() < 2e-3
