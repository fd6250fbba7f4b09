"""Triton kernels of the QTIP family (CPU: TRITON_INTERPRET=1, set by conftest).

The template decodes the core trellis matrix What (both layouts, codes HYB / 1MAD / 3INST). QTIP's weight is
W = diag(SV) H_N What H_K diag(SU) with whole-dimension normalized Hadamards: the spec lists them as online
transforms (signs SU, Hadamard size 0 on the input side; Hadamard size 0, signs SV on the output side) and the
generated entry point applies them around the kernel, the bias after the output transforms. The check is the
harness's x @ ir.dequantize(W).T in float64 (tests/kernel_harness.check_kernel, NaN-prefilled output).
"""
import pytest
import torch
import triton
import triton.language as tl

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
    core = {k: v.to(DEVICE) for k, v in dict(qt.tensors, SU=torch.ones(64, dtype=torch.float16), SV=torch.ones(32)).items()}
    mod = kernel_module(spec, "gemm", 64, 32, 64, GEMM)
    y = mod.run(torch.eye(64, dtype=torch.float16, device=DEVICE), core, 32).float().cpu()
    What = decode_tiles(spec, qt.tensors["trellis"], 32, 64, qt.tensors.get("tlut")).double()
    expected = block_hadamard(block_hadamard(torch.eye(64, dtype=torch.float64), 64) @ What.t(), 32)
    assert ((y.double() - expected).norm() / expected.norm()).item() < 2e-3


# -- the kernel-layout fast path (decode_tile_fast) ------------------------------------------------------------

@triton.jit
def _probe_kernel(decode, trellis_ptr, tlut_ptr, su_ptr, sv_ptr, out_ptr, N, K, BITS: tl.constexpr, V: tl.constexpr,
                  L: tl.constexpr, TLUT_BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    k0 = tl.program_id(0) * BLOCK_K
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = k0 + tl.arange(0, BLOCK_K)
    w = decode(trellis_ptr, tlut_ptr, su_ptr, sv_ptr, k0, offs_n, offs_n < N, N, K, BITS, V, L, TLUT_BITS,
               BLOCK_K, BLOCK_N)
    tl.store(out_ptr + kk[:, None] * N + offs_n[None, :], w, mask=(kk[:, None] < K) & (offs_n[None, :] < N))


# (bits, N, K, BLOCK_K, BLOCK_N): tiles past N and past K (BLOCK_K > K), several 2x2 tile blocks per tile
PROBES = [(2, 64, 128, 64, 32), (2, 32, 32, 64, 64), (3, 64, 64, 32, 16), (4, 32, 128, 128, 32)]


@pytest.mark.parametrize("bits, N, K, bk, bn", PROBES, ids=[f"K{p[0]}-{p[1]}x{p[2]}-k{p[3]}n{p[4]}" for p in PROBES])
def test_fast_tile_is_the_trellis_matrix(bits, N, K, bk, bn):
    """decode_tile_fast returns What^T bit-exactly (random words: every state of every chunk position)."""
    spec = ir.get_format("qtip", K=bits)
    qt = synthetic_quantized(spec, N, K, seed=5)
    cfg = ir.KernelConfig(block_m=1, block_n=bn, block_k=bk, split_k=1, num_warps=4, num_stages=1)
    mod = kernel_module(spec, "gemv", 1, N, K, cfg)
    t = {k: v.to(DEVICE) for k, v in qt.tensors.items()}
    out = torch.full((K, N), float("nan"), device=DEVICE)
    grid = (triton.cdiv(K, bk), triton.cdiv(N, bn))
    _probe_kernel[grid](mod.decode_tile_fast, t["trellis"], t["tlut"], t["SU"], t["SV"], out, N, K, BITS=bits, V=2,
                        L=16, TLUT_BITS=9, BLOCK_K=bk, BLOCK_N=bn)
    What = decode_tiles(spec, qt.tensors["trellis"], N, K, qt.tensors["tlut"])
    assert torch.equal(out.cpu(), What.t())


def test_fast_path_only_for_the_kernel_layout():
    """The fast path needs the kernel layout (HYB V=2 Q=9) and BLOCK_K a multiple of 32."""
    def fast(opts, block_k):
        cfg = ir.KernelConfig(block_m=1, block_n=16, block_k=block_k, split_k=1, num_warps=4, num_stages=1)
        return hasattr(kernel_module(ir.get_format("qtip", **opts), "gemv", 1, 32, 64, cfg), "decode_tile_fast")
    assert fast({}, 32) and fast(dict(K=3), 64) and fast(dict(K=4), 32)
    assert not fast({}, 16) and not fast(dict(code="1mad"), 32) and not fast(dict(code="hyb", V=1), 32)


FAST_CONFIGS = {
    "gemv_m1": ("gemv", 1, ir.KernelConfig(block_m=1, block_n=32, block_k=64, split_k=2, num_warps=4, num_stages=1)),
    "gemm_m16": ("gemm", 16, ir.KernelConfig(block_m=16, block_n=32, block_k=64, split_k=2, num_warps=4, num_stages=1)),
    "gemm_swap": ("gemm", 33, ir.KernelConfig(block_m=64, block_n=32, block_k=32, split_k=1, num_warps=4,
                                              num_stages=1, swap_ab=True)),
}


@pytest.mark.parametrize("config", sorted(FAST_CONFIGS))
def test_fast_path_kernels(config, gen):
    """Whole kernels on the fast path (K=3: byte-wise chunks), with split-K and bias."""
    family, M, cfg = FAST_CONFIGS[config]
    qt = synthetic_quantized(ir.get_format("qtip", K=3), 64, 128, seed=9)
    mod = kernel_module(qt.spec, family, M, 64, 128, cfg)
    assert hasattr(mod, "decode_tile_fast")
    for dtype in DTYPES:
        err = check_kernel(mod, qt, M, dtype, gen, bias=True, device=DEVICE)
        assert err < REL_TOL[dtype], f"{config} {dtype}: rel err {err:.2e}"
