"""Fast decode paths of the matryoshka, ccq and eqat (3-bit, 10 fields per word) Triton decodes (decode_tile_fast / decode_parts_fast).

They decode without int->float conversions (exponent tricks) and, for CCQ's affine code map, emulate
floor() by rounding under 1.5 * 2**23 plus a correction. Checked here (CPU: TRITON_INTERPRET=1, set by conftest):
- the decoded tile bit-exactly: with x = the identity, y[k, n] = W[n, k]. In the gemm family that is
  decode_tile_fast's tile; in the gemv family it is decode_parts_fast's (q - z) * s, which is exact too: every
  product there has at most 21 significant bits, so the fp32 product rounds only when stored in x's dtype;
- the floor emulation on code-map inputs that hit ties (y an integer, y + 0.5 an integer) and negative codes;
- whole kernels at non-default options against the reference (gemv parts / gemv tile / gemm)."""
import os

import pytest
import torch

import ir
from ir.hadamard import block_hadamard
from ir.tensor import QuantizedTensor
from kernel_harness import REL_TOL, check_kernel, kernel_module

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _quantized(fmt, rows, cols, **options):
    spec = ir.get_format(fmt, **options)
    W = torch.randn(rows, cols, generator=torch.Generator().manual_seed(5)) * 0.05
    return ir.quantize(spec, W)


def _cfg(block_m, block_n, block_k, split_k=1):
    return ir.KernelConfig(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split_k, num_warps=4,
                           num_stages=1)


def _identity_run(qt, family, cfg, dtype):
    """y = eye(K) @ W^T, i.e. the decoded weights, through the kernel (M = K rows: the callers use block_m 64, which
    decodes the same tiles as 16 with a quarter of the programs, 4x faster under the interpreter)."""
    N, K = qt.shape
    mod = kernel_module(qt.spec, family, K, N, K, cfg)
    assert hasattr(mod, "decode_tile_fast")
    if family == "gemv":
        assert hasattr(mod, "decode_parts_fast")
    x = torch.eye(K, dtype=dtype, device=DEVICE)
    y = mod.run(x, {k: v.to(DEVICE) for k, v in qt.tensors.items()}, N)
    return y.cpu().float(), ir.dequantize(qt).t().to(dtype).float()


EXACT = [
    ("matryoshka", dict(), torch.float16),
    ("matryoshka", dict(r=2, group_size=64), torch.float16),
    ("matryoshka", dict(r=8, group_size=32, sym=True), torch.float16),
    ("ccq_wint2", dict(), torch.float16),
    pytest.param("ccq_wint2", dict(scale_dtype="bfloat16"), torch.bfloat16, marks=pytest.mark.skipif(
        INTERPRETED, reason="triton 3.6's interpreter truncates fp32 -> bf16 (the GPU rounds to nearest even)")),
    ("ccq", dict(code_map="table"), torch.float16),
    ("ccq", dict(L=4, N=4, S=2, clustered=False), torch.float16),      # identity map, int16 container
    ("ccq", dict(L=5, N=2, S=4, group_size=32), torch.float16),       # seq_len 2
    ("eqat_w3g128", dict(), torch.float16),                           # tiles start at fields 0, 4, 8, 2, 6
    ("eqat", dict(bits=3, group_size=64), torch.float16),
]


@pytest.mark.parametrize("family", ["gemm", "gemv"])
@pytest.mark.parametrize("fmt, options, dtype", EXACT)
def test_decoded_tile_is_exact(fmt, options, dtype, family):
    qt = _quantized(fmt, 48, 640, **options)
    gs = qt.spec.param("group_size")
    bk = 64 if family == "gemm" else min(64, gs)  # gemm: tiles may span groups (group 32)
    y, ref = _identity_run(qt, family, _cfg(64, 16, bk, split_k=2), dtype)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("family", ["gemm", "gemv"])
@pytest.mark.parametrize("block_k", [64, 128])
def test_wint2_5_tile_is_exact(family, block_k):
    """Whole 64-row groups per tile: one (gemv: scale factored out) or two (gemv: scaled values, s = 1)."""
    qt = _quantized("ccq_wint2_5", 48, 384)
    y, ref = _identity_run(qt, family, _cfg(64, 16, block_k), torch.float16)
    assert torch.equal(y, ref)


def test_affine_code_map_floor_ties_and_negative_codes():
    """code_scale 0.5 makes fma(z, cs, cz) + 0.5 an integer for every odd z and a half-integer for every even z;
    offsets of -40.25 / -3.0 give negative codes (all-ones windows under the arithmetic shift)."""
    qt = _quantized("ccq_wint2", 48, 256)
    t = dict(qt.tensors)
    N = qt.shape[0]
    t["weight"] = torch.arange(t["weight"].numel(), dtype=torch.int64).reshape(t["weight"].shape).remainder(256).to(torch.uint8)
    t["code_scale"] = torch.tensor([0.5, 0.25, 1.0, 3.0] * (N // 4), dtype=torch.float32)
    t["code_zp"] = torch.tensor([0.0, -40.25, 0.5, -3.0] * (N // 4), dtype=torch.float32)
    qt2 = QuantizedTensor(qt.spec, qt.shape, t)
    for family in ("gemm", "gemv"):
        y, ref = _identity_run(qt2, family, _cfg(64, 16, 64), torch.float16)
        assert torch.equal(y, ref), family


CASES = [
    ("matryoshka", dict()),
    ("matryoshka", dict(r=2, group_size=32)),           # tiles of 64 span two groups
    ("ccq_wint2", dict()),
    pytest.param("ccq_wint2", dict(scale_dtype="bfloat16"), marks=pytest.mark.skipif(
        INTERPRETED, reason="the interpreter's truncating fp32 -> bf16 biases the bf16 tile past the fp16 tolerance")),
    ("ccq", dict(code_map="table")),
    ("ccq_wint2_5", dict()),
    ("eqat_w3g128", dict()),
    ("eqat", dict(bits=3, group_size=-1)),              # K = 384: the last word holds 4 of its 10 fields
]
CONFIGS = {
    "gemv_parts": ("gemv", 1, _cfg(1, 32, 32, split_k=2)),
    "gemv_tile": ("gemv", 3, _cfg(4, 16, 128)),
    "gemm": ("gemm", 16, _cfg(16, 32, 64, split_k=2)),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("fmt, options", CASES)
def test_kernel_options(fmt, options, config, gen):
    qt = _quantized(fmt, 40, 384, **options)
    family, M, cfg = CONFIGS[config]
    mod = kernel_module(qt.spec, family, M, 40, 384, cfg)
    assert hasattr(mod, "decode_tile_fast") or (fmt == "ccq_wint2_5" and cfg.block_k % 64)
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, M, dtype, gen, bias=True, device=DEVICE)
        assert err < REL_TOL[dtype], f"{fmt} {options} {config} {dtype}: rel err {err:.2e}"


def test_fast_paths_only_where_they_apply():
    """matryoshka r = 3 / 6 (10 / 5 fields per word) and CCQ code words over 22 bits keep the generic decode;
    the factorized gemv form needs one group per tile."""
    def has(fmt, options, name, block_k=64):
        spec = ir.get_format(fmt, **options)
        return hasattr(kernel_module(spec, "gemv", 1, 48, 768, _cfg(1, 16, block_k)), name)
    assert not has("matryoshka", dict(r=3), "decode_tile_fast")
    assert has("matryoshka", dict(r=4, group_size=64), "decode_parts_fast")
    assert not has("matryoshka", dict(r=4, group_size=32), "decode_parts_fast")
    assert not has("ccq", dict(L=8, N=4, S=5, clustered=True), "decode_tile_fast")  # 23-bit code word
    assert not has("ccq", dict(group_size=96), "decode_parts_fast")   # a 64-row tile would span two groups
    assert not has("eqat", dict(bits=3, group_size=96), "decode_tile_fast")
    assert has("eqat", dict(bits=3, group_size=128), "decode_parts_fast")
    assert not has("ccq_wint2_5", dict(), "decode_tile_fast", block_k=32)  # tiles of whole 64-row groups only


HALF_DOT = [
    ("ccq_wint2", dict()),                                   # affine map, (6, 4, 3): two shift groups
    ("ccq", dict(code_map="table")),                          # table map: code words looked up
    ("ccq", dict(L=4, N=4, S=2, clustered=False)),            # identity map, int16 container
    ("ccq", dict(L=5, N=2, S=4, group_size=32)),              # seq_len 2 (4 K indices per word)
    ("ccq", dict(L=4, N=8, S=1)),                             # seq_len 8 (16 per word, joined x pairs)
]


@pytest.mark.parametrize("fmt, options", HALF_DOT)
def test_ccq_half_dot(fmt, options, gen):
    """CCQ's half_dot (two code words per int32, fp16 pair products, the affine map's floor by add.rm on the GPU):
    against the reference with and without the register prefetch and split-K, fp16 and bf16 x, and fp16's largest
    activations (the 2**-S scale keeps every fp16 lane sum finite)."""
    qt = _quantized(fmt, 40, 384, **options)
    for ns, sk in ((1, 1), (2, 3)):
        cfg = ir.KernelConfig(block_m=1, block_n=32, block_k=32, split_k=sk, num_warps=4, num_stages=ns, half_dot=True)
        mod = kernel_module(qt.spec, "gemv", 1, 40, 384, cfg)
        assert "t = part_dot(q, z, " in open(mod.__file__).read()
        for dtype in (torch.float16, torch.bfloat16):
            err = check_kernel(mod, qt, 1, dtype, gen, bias=True, device=DEVICE)
            assert err < REL_TOL[dtype], f"{fmt} {options} {cfg.label} {dtype}: rel err {err:.2e}"
    x = torch.randn(1, 384, generator=gen)
    x[0, :16] = 65504.0
    err = check_kernel(mod, qt, 1, torch.float16, gen, device=DEVICE, x=x)
    assert err < REL_TOL[torch.float16], f"{fmt} {options} outliers: rel err {err:.2e}"


def test_ccq_half_dot_decodes_exactly():
    """With one-hot rows of x every fp16 product and lane sum of half_dot is exact, so y = W^T bit for bit: the add.rm
    floor of the affine map (on the GPU) over every cluster index, with ties and negative codes, and the fields' bit
    positions in both halves of the word."""
    qt = _quantized("ccq_wint2", 16, 128)
    t = dict(qt.tensors)
    N, K = qt.shape
    t["weight"] = torch.arange(t["weight"].numel(), dtype=torch.int64).reshape(t["weight"].shape).remainder(256).to(torch.uint8)
    t["code_scale"] = torch.tensor([0.5, 0.25, 1.0, 3.0] * (N // 4), dtype=torch.float32)
    t["code_zp"] = torch.tensor([0.0, -40.25, 0.5, -3.0] * (N // 4), dtype=torch.float32)
    q = QuantizedTensor(qt.spec, qt.shape, t)
    cfg = ir.KernelConfig(block_m=1, block_n=16, block_k=64, split_k=1, num_warps=4, num_stages=2, half_dot=True)
    mod = kernel_module(q.spec, "gemv", 1, N, K, cfg)
    y = mod.run(torch.eye(K, dtype=torch.float16, device=DEVICE), {k: v.to(DEVICE) for k, v in t.items()}, N)
    assert torch.equal(y.cpu().float(), ir.dequantize(q).t().to(torch.float16).float())


@pytest.mark.parametrize("fmt, full", [("higgs", True), ("higgs_p1_b2", True), ("higgs_p1_b3", True),
                                       ("higgs_p1_b4", False), ("higgs_p2_b2", False), ("higgs_p2_b3", False)])
def test_higgs_half_dot(fmt, full, gen):
    """HIGGS's half_dot (a pair of elements is one 2 * bits field: one 32-bit load of the scaled pair table, one HFMA2
    with x's pair): against the reference with and without the register prefetch and split-K, fp16 and bf16 x; fp16's
    largest values in the rotated x (x = 2047 * a sum of Hadamard rows puts 65504 in 16 consecutive columns of H x)
    stay finite; the pair table is built once per grid tensor and again after an in-place change of the grid; a grid
    beyond what the scale allows is refused by name. One pair layout each in full (a pair per 8-bit code, two 2-bit
    codes, 3-bit codes straddling words); the others with the prefetch and fp16 x only (CI time)."""
    qt = _quantized(fmt, 40, 1024)
    N, K = qt.shape
    for ns, sk in ((1, 1), (2, 3)) if full else ((2, 3),):
        cfg = ir.KernelConfig(block_m=1, block_n=32, block_k=64, split_k=sk, num_warps=4, num_stages=ns, half_dot=True)
        mod = kernel_module(qt.spec, "gemv", 1, N, K, cfg)
        assert "t = part_dot(q, z, " in open(mod.__file__).read()
        for dtype in (torch.float16, torch.bfloat16) if full else (torch.float16,):
            err = check_kernel(mod, qt, 1, dtype, gen, bias=True, device=DEVICE)
            assert err < REL_TOL[dtype], f"{fmt} {cfg.label} {dtype}: rel err {err:.2e}"
    x = torch.randn(1, K, generator=gen)
    rows = block_hadamard(torch.eye(1024)[:16], 1024, normalized=False)   # rows 0..15 of H (entries +-1, exact)
    x[0, :1024] = 2047.0 * rows.sum(0)   # H x / 32 = 65504 at columns 0..15
    err = check_kernel(mod, qt, 1, torch.float16, gen, device=DEVICE, x=x)
    assert err < REL_TOL[torch.float16], f"{fmt} outliers: rel err {err:.2e}"
    # the pair table: cached per grid tensor, rebuilt after an in-place change
    tensors = {k: v.to(DEVICE) for k, v in qt.tensors.items()}
    x16 = torch.randn(1, K, generator=gen).to(torch.float16).to(DEVICE)
    y0 = mod.run(x16, tensors, N)
    buf = mod._higgs_dot_grid(tensors["grid"])
    assert mod._higgs_dot_grid(tensors["grid"]) is buf and torch.equal(buf.cpu(), qt.tensors["grid"])
    tensors["grid"].neg_()
    assert mod._higgs_dot_grid(tensors["grid"]) is not buf
    assert torch.equal(mod.run(x16, tensors, N).cpu(), -y0.cpu())   # every product and sum changes sign exactly
    with pytest.raises(ValueError, match=r"half_dot scales the grid by 2\*\*-\d.*Use a config without half_dot"):
        mod.run(x16, dict(tensors, grid=tensors["grid"] * 8), N)


def test_higgs_half_dot_refused_across_groups():
    """HIGGS's half_dot takes one scale group per K tile: a wider tile is refused, naming the format."""
    spec = ir.get_format("higgs_p1_b3")
    with pytest.raises(ir.SpecError, match="HIGGS grids with block_k <= the group size.*higgs_p1_b3 has none"):
        kernel_module(spec, "gemv", 1, 40, 1024, ir.KernelConfig(block_m=1, block_n=32, block_k=512, half_dot=True))
