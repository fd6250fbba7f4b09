"""WaterSIC fast decode (templates/triton/decode/watersic.jinja: decode_tile_fast / decode_parts_fast).

The packed codes (bits < 8) are int32 words [N, ceil(K / PER)] along K per column. The fast path loads each word
once (16-byte loads when K / PER is a multiple of 4, scalar loads otherwise: two branches) and turns the fields into
floats by the exponent trick instead of an int->float convert. Checked here: the trick's pure-torch twin against
the format's own unpacking on random words; the decoded tiles bit-exactly (a probe kernel stores what
decode_tile_fast / decode_parts_fast return: row_scale * Z, resp. Z, row_scale, 0), over both load branches and
tails of K (partial words, tiles past K); whole kernels at fast-path configs against the reference
(CPU: TRITON_INTERPRET=1, set by conftest)."""
import pytest
import torch
import triton
import triton.language as tl

import ir
from ir import KernelConfig
from ir.bitpack import unpack_cols
from ir.formats.prefixquant import sign_extend
from ir.formats.watersic import codes_f32_of_words
from ir.synthetic import synthetic_quantized
from kernel_harness import REL_TOL, check_kernel, device_or_skip, kernel_module

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK_K, BLOCK_N = 64, 16


def _codes(qt) -> torch.Tensor:
    """Z [N, K] (int64) of a watersic tensor, by the format's own unpacking."""
    bits = qt.spec.param("bits")
    N, K = qt.shape
    return sign_extend(unpack_cols(qt.tensors["qweight"], bits, K, 32), bits)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7])
def test_codes_twin_matches_unpacking(bits):
    """Random words (every field value in every slot; high bits unused when 32 % bits != 0 are 0 as stored)."""
    per = 32 // bits
    words = torch.randint(-2**31, 2**31, (6, 5), dtype=torch.int32, generator=torch.Generator().manual_seed(bits))
    if bits * per < 32:
        words = words & ((1 << (bits * per)) - 1)
    z = codes_f32_of_words(words, bits)                                    # [words along K, PER, columns]
    ref = sign_extend(unpack_cols(words.t().contiguous(), bits, 6 * per, 32), bits)   # [columns, K]
    assert torch.equal(z.permute(2, 0, 1).reshape(5, -1), ref.float())


@triton.jit
def _probe_kernel(decode, parts, qweight_ptr, row_scale_ptr, col_scale_ptr, out_ptr, s_ptr, z_ptr, N, K,
                  BITS: tl.constexpr, FIELDS_PER_WORD: tl.constexpr, PARTS: tl.constexpr,
                  BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    k0 = tl.program_id(0) * BLOCK_K
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    kk = k0 + tl.arange(0, BLOCK_K)
    if PARTS:
        w, s, z = parts(qweight_ptr, row_scale_ptr, col_scale_ptr, k0, offs_n, mask_n, N, K, BITS, FIELDS_PER_WORD,
                        BLOCK_K, BLOCK_N)
        tl.store(s_ptr + offs_n[None, :], s, mask=mask_n[None, :])
        tl.store(z_ptr + offs_n[None, :], z, mask=mask_n[None, :])
    else:
        w = decode(qweight_ptr, row_scale_ptr, col_scale_ptr, k0, offs_n, mask_n, N, K, BITS, FIELDS_PER_WORD,
                   BLOCK_K, BLOCK_N)
    tl.store(out_ptr + kk[:, None] * N + offs_n[None, :], w, mask=(kk[:, None] < K) & mask_n[None, :])


# (bits, K): K / PER a multiple of 4 (16-byte branch) or not, K a multiple of PER or not (a partial last word),
# K not a multiple of BLOCK_K (a tile past K)
PROBES = [(4, 256), (4, 200), (4, 196), (2, 192), (2, 100), (7, 128), (7, 90)]


@pytest.mark.parametrize("parts", [False, True], ids=["tile", "parts"])
@pytest.mark.parametrize("bits, K", PROBES, ids=[f"b{b}-K{k}" for b, k in PROBES])
def test_decoded_tile_is_exact(bits, K, parts):
    N = 40
    spec = ir.get_format("watersic", bits=bits)
    qt = synthetic_quantized(spec, N, K, seed=11)
    cfg = ir.KernelConfig(block_m=1, block_n=BLOCK_N, block_k=BLOCK_K, split_k=1, num_warps=4, num_stages=1)
    mod = kernel_module(spec, "gemv", 1, N, K, cfg)
    t = {k: v.to(DEVICE) for k, v in qt.tensors.items()}
    out = torch.full((K, N), float("nan"), device=DEVICE)
    s, z = torch.full((N,), float("nan"), device=DEVICE), torch.full((N,), float("nan"), device=DEVICE)
    grid = (triton.cdiv(K, BLOCK_K), triton.cdiv(N, BLOCK_N))
    _probe_kernel[grid](mod.decode_tile_fast, mod.decode_parts_fast, t["qweight"], t["row_scale"], t["col_scale"],
                        out, s, z, N, K, BITS=bits, FIELDS_PER_WORD=32 // bits, PARTS=parts,
                        BLOCK_K=BLOCK_K, BLOCK_N=BLOCK_N)
    Z = _codes(qt).float()
    if parts:
        assert torch.equal(out.cpu(), Z.t())
        assert torch.equal(s.cpu(), qt.tensors["row_scale"]) and torch.equal(z.cpu(), torch.zeros(N))
    else:
        assert torch.equal(out.cpu(), (qt.tensors["row_scale"][:, None] * Z).t())  # the core C = row_scale * Z


def test_fast_path_only_where_fields_tile_block_k():
    """BLOCK_K (a power of two) must hold whole words of PER = 32 // bits fields: bits 2, 4, 7, never 3, 5, 6;
    bits = 8 (int8 codes) has no fast path."""
    def fast(bits, block_k):
        cfg = ir.KernelConfig(block_m=1, block_n=16, block_k=block_k, split_k=1, num_warps=4, num_stages=1)
        mod = kernel_module(ir.get_format("watersic", bits=bits), "gemv", 1, 32, 640, cfg)
        return hasattr(mod, "decode_tile_fast") and hasattr(mod, "decode_parts_fast")
    assert fast(4, 64) and fast(7, 32) and fast(2, 32)
    assert not fast(3, 64) and not fast(5, 64) and not fast(8, 64)


CONFIGS = {
    "gemv_m1": ("gemv", 1, ir.KernelConfig(block_m=1, block_n=32, block_k=128, split_k=2, num_warps=4, num_stages=1)),
    "gemv_m3": ("gemv", 3, ir.KernelConfig(block_m=4, block_n=16, block_k=64, split_k=1, num_warps=4, num_stages=1)),
    "gemm": ("gemm", 16, ir.KernelConfig(block_m=16, block_n=32, block_k=64, split_k=2, num_warps=4, num_stages=1)),
    "gemm_swap": ("gemm", 33, ir.KernelConfig(block_m=64, block_n=32, block_k=64, split_k=1, num_warps=4,
                                              num_stages=1, swap_ab=True)),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("bits, K", [(4, 384), (4, 328), (2, 320)], ids=["b4-K384", "b4-K328", "b2-K320"])
def test_kernel_fast_path(bits, K, config, gen):
    """Encoded Gaussian weights (K = 328: 41 words per column, the scalar-load branch and a tile past K)."""
    N = 48
    spec = ir.get_format("watersic", bits=bits)
    qt = ir.quantize(spec, torch.randn(N, K, generator=gen) * 0.05)
    family, M, cfg = CONFIGS[config]
    mod = kernel_module(spec, family, M, N, K, cfg)
    assert hasattr(mod, "decode_tile_fast")
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, M, dtype, gen, bias=True, device=DEVICE)
        assert err < REL_TOL[dtype], f"bits={bits} K={K} {config} {dtype}: rel err {err:.2e}"


def test_column_scale_helper_is_one_launch_of_the_same_arithmetic():
    """The wrapper's input column scale (WaterSIC's col_scale, QTIP's signs) runs as one _scale_cols_kernel launch
    with torch's form's fp32 product and rounding: equal to it bit for bit, fp16 and bf16, odd sizes included."""
    dev = device_or_skip()
    spec = ir.get_format("watersic")
    mod = kernel_module(spec, "gemv", 1, 64, 256, KernelConfig(block_m=1, block_n=64, block_k=64, split_k=1,
                                                                 num_warps=4))
    g = torch.Generator().manual_seed(7)
    for dtype, (rows, K) in ((torch.float16, (3, 256)), (torch.bfloat16, (5, 1000)), (torch.float16, (1, 1))):
        x = (torch.randn(rows, K, generator=g) * 3).to(dtype).to(dev)
        s = (torch.randn(K, generator=g) * 2).half().to(dev)
        got = mod._scale_cols(x, s)
        assert got.dtype == dtype and torch.equal(got, (x.float() * s.float()).to(dtype))
        assert torch.equal(mod._scale_cols(x.t().contiguous().t(), s), got)   # a non-contiguous x is copied first
