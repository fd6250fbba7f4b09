"""Every registered format gets generated Triton kernels that match x @ dequantize(W).T.

On the CPU they run under TRITON_INTERPRET=1 (set by conftest); on a GPU the same test runs natively.
Shapes are small and legal for each format, and N, K are not multiples of the tile."""
import math
from pathlib import Path

import pytest
import torch

import ir
from kernel_harness import REL_TOL, check_kernel, kernel_module, run_ptx, small_problem

FORMATS = ir.list_formats()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def quantized():
    cache = {}

    def get(name):
        if name not in cache:
            spec = ir.get_format(name)
            N, K, gemv, gemm = small_problem(spec)
            g = torch.Generator().manual_seed(1234)
            W = torch.randn(N, K, generator=g) * 0.05
            cache[name] = (ir.quantize(spec, W), gemv, gemm)
        return cache[name]
    return get


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("M", [1, 3, 16, 33])
def test_kernel_matches_reference(name, M, quantized, gen):
    qt, gemv, gemm = quantized(name)
    N, K = qt.shape
    family, cfg = ("gemv", gemv) if M <= 4 else ("gemm", gemm)
    mod = kernel_module(qt.spec, family, M, N, K, cfg)
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, M, dtype, gen, bias=(M == 3), device=DEVICE)
        assert err < REL_TOL[dtype], f"{name} {family} M={M} {dtype}: rel err {err:.2e}"


def test_kernel_rejects_bad_arguments(quantized, gen):
    qt, gemv, _ = quantized("gguf_q4_0")
    N, K = qt.shape
    mod = kernel_module(qt.spec, "gemv", 1, N, K, gemv)
    x = torch.randn(1, K, generator=gen).half()
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        mod.run(x.float(), qt.tensors, N)
    bad = dict(qt.tensors, blocks=qt.tensors["blocks"][:, :-1].contiguous())
    with pytest.raises(ValueError, match="tensor 'blocks' has shape"):
        mod.run(x, bad, N)
    with pytest.raises(KeyError, match="missing tensor 'blocks'"):
        mod.run(x, {}, N)
    with pytest.raises(ValueError, match="bias must have shape"):
        mod.run(x, qt.tensors, N, bias=torch.zeros(N + 1, dtype=torch.float16))


@pytest.mark.parametrize("name", FORMATS)
def test_gemv_small_k_tiles_and_odd_split(name, quantized, gen):
    """block_k=32 (inside one scale group for every grouped format: the factorized gemv path) and split_k=3."""
    qt, _, _ = quantized(name)
    N, K = qt.shape
    cfg = ir.KernelConfig(block_m=1, block_n=32, block_k=32, split_k=3, num_warps=4, num_stages=1)
    mod = kernel_module(qt.spec, "gemv", 1, N, K, cfg)
    err = check_kernel(mod, qt, 1, torch.float16, gen, bias=True, device=DEVICE)
    assert err < REL_TOL[torch.float16], f"{name}: rel err {err:.2e}"


# gemm with swap_ab=False is covered for every format by test_kernel_matches_reference's default-config cases
# at M=16/33 with larger block_k; here: every weight-only format swapped, the packed-affine families (whose
# gemm has a code-tile path inside one scale group) both ways
_AFFINE_K = [n for n in FORMATS if ir.get_format(n).family in ("gptq", "eqat")]


_SWAPPABLE = [n for n in FORMATS if ir.get_format(n).act_quant is None]   # swap_ab is for weight-only formats


@pytest.mark.parametrize("name,swap_ab", [(n, True) for n in _SWAPPABLE] + [(n, False) for n in _AFFINE_K])
def test_gemm_small_k_tiles_swap_and_split(name, swap_ab, quantized, gen):
    """block_k=32 (inside one scale group: the gemm's pair-decode path where a format has one), swap_ab both
    ways, split_k=2 (one-launch split-K reduction), 2 M tiles with a ragged last one, 1-3 N tiles
    (N = 32-96, mostly a ragged last one), bias."""
    qt, _, _ = quantized(name)
    N, K = qt.shape
    cfg = ir.KernelConfig(block_m=16, block_n=32, block_k=32, split_k=2, num_warps=4, num_stages=1, swap_ab=swap_ab)
    mod = kernel_module(qt.spec, "gemm", 17, N, K, cfg)
    dtype = torch.bfloat16 if swap_ab else torch.float16
    err = check_kernel(mod, qt, 17, dtype, gen, bias=True, device=DEVICE)
    assert err < REL_TOL[dtype], f"{name} swap_ab={swap_ab}: rel err {err:.2e}"


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_part_code_twin(bits, gen):
    """ir.bitpack.part_code, twin of the M=1 gemv's part_code: c + q exactly for field q of each word, c = 2**(23 - p)
    with p the mantissa bit the field is rotated to, c <= 2**11 (the offset the kernel folds into its zero term)."""
    from ir.bitpack import part_code, part_position, unpack_rows
    per = 32 // bits
    words = torch.randint(-2 ** 31, 2 ** 31, (64, 8), generator=gen, dtype=torch.int64).to(torch.int32)
    q = unpack_rows(words, bits, 64 * per).view(64, per, 8)
    for j in range(per):
        p = part_position(bits, j)
        assert 12 <= p <= 23 - bits, (bits, j, p)
        assert torch.equal(part_code(words, j, bits).double() - 2.0 ** (23 - p), q[:, j].double()), (bits, j)


@pytest.mark.parametrize("name", ["gptq", "eqat_w2g128"])
def test_gemv_folded_offsets_heavy_tailed_x(name, quantized, gen):
    """The M=1 field-by-field path of the packed-affine formats sums x_j * (c_j + q_j) and folds the offsets c_j (up
    to 2**11) into the zero term: with heavy-tailed activations (log-normal magnitudes, outliers ~1e4 as in LLM
    outlier channels) the fp32 cancellation stays well below the fp16 rounding of y (~3e-4 relative)."""
    qt, _, _ = quantized(name)
    N, K = qt.shape
    cfg = ir.KernelConfig(block_m=1, block_n=32, block_k=64, split_k=2, num_warps=4, num_stages=1)
    mod = kernel_module(qt.spec, "gemv", 1, N, K, cfg)
    assert hasattr(mod, "part_code")  # the folded path was taken
    x = (torch.randn(1, K, generator=gen) * torch.exp(2.0 * torch.randn(1, K, generator=gen))).clamp(-3e4, 3e4)
    err = check_kernel(mod, qt, 1, torch.float16, gen, device=DEVICE, x=x)
    assert err < 6e-4, f"{name}: rel err {err:.2e}"
    err = check_kernel(mod, qt, 1, torch.bfloat16, gen, bias=True, device=DEVICE, x=x)
    assert err < REL_TOL[torch.bfloat16], f"{name} bf16: rel err {err:.2e}"


@pytest.mark.parametrize("name", _AFFINE_K + ["bnb_nf4", "bnb_fp4"])
@pytest.mark.parametrize("split_k", [1, 3])
def test_gemv_register_prefetch(name, split_k, quantized, gen):
    """num_stages >= 2 on the M=1 field-by-field path: the next K tile's words, scales, zeros and x are loaded one
    iteration ahead (masked off after the last tile of each split; split_k=3 leaves slices of unequal length), with
    a register cap (maxnreg, a launch option) on the same kernel."""
    qt, _, _ = quantized(name)
    N, K = qt.shape
    cfg = ir.KernelConfig(block_m=1, block_n=32, block_k=32, split_k=split_k, num_warps=4, num_stages=2, maxnreg=128)
    mod = kernel_module(qt.spec, "gemv", 1, N, K, cfg)
    src = Path(mod.__file__).read_text()
    if not hasattr(mod, "part_code"):
        pytest.skip(f"{name}: no field-by-field (part_code) gemv path: 3-bit fields")
    assert "nq, ns, nz = decode_parts_fast(" in src and "maxnreg=CONFIG[\"maxnreg\"]" in src
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, 1, dtype, gen, bias=True, device=DEVICE)
        assert err < REL_TOL[dtype], f"{name} {dtype}: rel err {err:.2e}"


@pytest.mark.parametrize("name", FORMATS)
def test_evict_first_hints_the_weight_stream_only_when_asked(name, quantized, gen):
    """KernelConfig.evict_first: the weight stream's loads carry eviction_policy="evict_first" in both families'
    kernels (fast paths), the default config renders without it (kernels tuned before the option keep their
    source hash), and the hinted M=1 and M=16 kernels still match the reference."""
    import dataclasses
    qt, gemv, gemm = quantized(name)
    N, K = qt.shape
    for family, M, cfg in (("gemv", 1, gemv), ("gemm", 16, gemm)):
        plain = kernel_module(qt.spec, family, M, N, K, cfg)
        hinted = kernel_module(qt.spec, family, M, N, K, dataclasses.replace(cfg, evict_first=True))
        assert "eviction_policy" not in Path(plain.__file__).read_text()
        src = Path(hinted.__file__).read_text()
        fast = "def decode_parts_fast(" in src or "def decode_tile_fast(" in src or "def decode_tile_nk_fast(" in src
        if fast:
            assert 'eviction_policy="evict_first"' in src, f"{name} {family}: no hinted weight load"
        assert hinted.CONFIG.get("evict_first") is True and "evict_first" not in plain.CONFIG
        err = check_kernel(hinted, qt, M, torch.float16, gen, device=DEVICE)
        assert err < REL_TOL[torch.float16], f"{name} {family} evict_first: rel err {err:.2e}"


@pytest.mark.parametrize("name", ["gptq", "int4_g128_sym", "eqat_w2g128", "int2_g64_asym", "awq", "bnb_nf4"])
@pytest.mark.parametrize("split_k", [1, 3])
def test_gemm_register_prefetch(name, split_k, quantized, gen):
    """reg_prefetch on the gemm family: the next K tile's words, zeros and scales are loaded one iteration ahead
    (masked off after each split's last tile; split_k=3 leaves slices of unequal length) and the result still
    matches the reference, with swap_ab too; a format whose gemm decode cannot split is refused by name."""
    import dataclasses
    qt, _, gemm = quantized(name)
    N, K = qt.shape
    cfg = dataclasses.replace(gemm, block_n=32, block_k=32, split_k=split_k, num_stages=1, reg_prefetch=True)
    if name in ("awq", "bnb_nf4"):
        with pytest.raises(ir.SpecError, match=f"reg_prefetch needs the gemm fast decode.*{name} has none"):
            kernel_module(qt.spec, "gemm", 16, N, K, cfg)
        return
    for c in (cfg, dataclasses.replace(cfg, swap_ab=True)):
        mod = kernel_module(qt.spec, "gemm", 16, N, K, c)
        src = Path(mod.__file__).read_text()
        assert "nwords, nzw, ns = decode_tile_nk_load(" in src and "def decode_tile_nk_fast(" not in src
        for M, dtype in ((16, torch.float16), (33, torch.bfloat16)):
            err = check_kernel(mod, qt, M, dtype, gen, bias=True, device=DEVICE)
            assert err < REL_TOL[dtype], f"{name} {c.label} M={M} {dtype}: rel err {err:.2e}"
    with pytest.raises(ir.SpecError, match="gemm family"):
        kernel_module(qt.spec, "gemv", 1, N, K, ir.KernelConfig(block_m=1, reg_prefetch=True))


@pytest.mark.parametrize("name", ["bnb_nf4", "bnb_fp4", "gptq", "int4_g128_sym", "eqat_w2g128", "int2_g64_asym",
                                  "ccq_wint2", "int8_g32_sym_f32"])
@pytest.mark.parametrize("num_stages,split_k", [(1, 1), (2, 3)])
def test_gemv_half_dot(name, num_stages, split_k, quantized, gen):
    """half_dot on the M=1 paths (bnb's table, packed 2- and 4-bit ints with zero points, CCQ's code words): each word's products two per
    instruction in fp16, scaled by 1 / PART_DOT_SCALE, with and without the register prefetch (num_stages 2), split-K slices of unequal length, fp16
    and bf16 x (bf16: exact fp32 products), outlier activations up to fp16's largest value (the scale keeps every fp16
    sum finite), x at an odd element offset (read as int32 pairs after a copy) and three rows of x."""
    import dataclasses
    qt, _, _ = quantized(name)
    N, K = qt.shape
    cfg = ir.KernelConfig(block_m=1, block_n=32, block_k=32, split_k=split_k, num_warps=4, num_stages=num_stages,
                          half_dot=True)
    mod = kernel_module(qt.spec, "gemv", 1, N, K, cfg)
    src = Path(mod.__file__).read_text()
    assert "t = part_dot(q, z, " in src and cfg.label.endswith("h") and mod.CONFIG["half_dot"] is True
    assert "half_dot" not in kernel_module(qt.spec, "gemv", 1, N, K, dataclasses.replace(cfg, half_dot=False)).CONFIG
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, 1, dtype, gen, bias=True, device=DEVICE)
        assert err < REL_TOL[dtype], f"{name} {dtype}: rel err {err:.2e}"
    x = (torch.randn(1, K, generator=gen) * torch.exp(2.0 * torch.randn(1, K, generator=gen))).clamp(-3e4, 3e4)
    x[0, :16] = 65504.0  # two words of the largest fp16 activations
    err = check_kernel(mod, qt, 1, torch.float16, gen, device=DEVICE, x=x)
    assert err < REL_TOL[torch.float16], f"{name} outliers: rel err {err:.2e}"
    xo = torch.randn(1, K + 1, generator=gen).to(torch.float16)[:, 1:]   # data_ptr % 4 == 2
    err = check_kernel(mod, qt, 1, torch.float16, gen, device=DEVICE, x=xo)
    assert err < REL_TOL[torch.float16], f"{name} odd offset: rel err {err:.2e}"
    err = check_kernel(mod, qt, 3, torch.float16, gen, device=DEVICE)   # rows of x one program row each
    assert err < REL_TOL[torch.float16], f"{name} M=3: rel err {err:.2e}"


@pytest.mark.parametrize("name,block_k", [("int2_g64_asym", 64), ("eqat_w2g128", 64), ("int4_g128_asym", 64),
                                          ("int8_g32_sym_f32", 32), ("int8_g32_sym_f32", 64), ("int4_g32_sym_f32", 64)])
def test_packed_half_dot_ptx_twin(name, block_k):
    """The packed-int half_dot's GPU-only inline PTX, run instruction by instruction on random words, every zero
    point and fp16 x pairs, with the per-column constants made the way the kernel makes them from z: each lane's fp16
    chain equals the products (q - z) * 2**-S * x in the kernel's order, each rounded to fp16, and the result the
    two lanes' sum in fp32. 2-bit words pair consecutive fields with x's pairs as stored (a PRMT per byte); 4- and
    8-bit words pair fields i and i + PER/2, whose x pair the kernel builds; block_k over the group size (several
    groups per tile) takes each word row's zero point into the PTX."""
    import re
    qt = ir.quantize(ir.get_format(name), torch.randn(32, 256, generator=torch.Generator().manual_seed(3)) * 0.05)
    mod = kernel_module(qt.spec, "gemv", 1, 32, 256, ir.KernelConfig(block_m=1, block_n=32, block_k=block_k, split_k=1,
                                                                       num_warps=4, num_stages=1, half_dot=True))
    bits = qt.spec.decode.bits
    several = block_k > qt.spec.param("group_size")
    per = 32 // bits
    src = Path(mod.__file__).read_text()
    body = src[src.index("def part_dot("):]
    asm = re.search(r'asm="""(.*?)"""', body, re.S).group(1)
    consts = [(int(m), int(c)) for m, c in re.findall(r"a\d+ = zi \* (\d+) \+ (-?\d+)", body)]
    S = int(round(-math.log2(float(re.search(r"\* (0\.\d+) \* _pair_half", body).group(1)))))
    if bits == 2:
        assert "prmt.b32 d, $1, $1" in asm
        lanes_fields = (list(range(0, per, 2)), list(range(1, per, 2)))
    else:
        lanes_fields = (list(range(per // 2)), list(range(per // 2, per)))
    g = torch.Generator().manual_seed(11)
    words = torch.randint(-2**31, 2**31, (24,), dtype=torch.int64, generator=g).tolist() + [0, -1, 0x1B1B1B1B]
    for w in words:
        w &= 0xFFFFFFFF
        z = w % (1 << bits)
        x = (torch.randn(per, generator=g) * 4).half()
        h = x.view(torch.int16).to(torch.int64) & 0xFFFF
        if several:  # the word row's zero point goes in whole; the PTX makes the constants (mad.lo)
            regs = {"$1": w, "$2": z}
        else:
            regs = {"$1": w, **{f"${2 + i}": z * m + c for i, (m, c) in enumerate(consts)}}
        for j, (lo, hi) in enumerate(zip(*lanes_fields)):
            regs[f"${2 + (1 if several else len(consts)) + j}"] = int(h[lo]) | int(h[hi]) << 16
        got = torch.tensor([run_ptx(asm, regs)["$0"]], dtype=torch.int64).to(torch.int32).view(torch.float32)
        sums = []
        for fields in lanes_fields:
            acc = 0.0
            for f in fields:
                d = (((w >> (bits * f)) & ((1 << bits) - 1)) - z) * 2.0 ** -S
                acc = float(torch.tensor(d * float(x[f]) + acc, dtype=torch.float64).half())
            sums.append(torch.tensor([acc], dtype=torch.float32))
        assert torch.equal(got, sums[0] + sums[1]), (hex(w), z, got, sums)


@pytest.mark.parametrize("name", ["int4_g32_sym_f32", "int2_g64_asym"])
def test_gemv_half_dot_several_groups_per_tile(name, gen):
    """half_dot with block_k over the group size (GPTQ layout): each word row takes its own scale and zero point; with
    the register prefetch (num_stages 2) and split-K slices past K, fp16 (largest activations too) and bf16 x."""
    N, K = 48, 512
    qt = ir.quantize(ir.get_format(name), torch.randn(N, K, generator=torch.Generator().manual_seed(7)) * 0.05)
    cfg = ir.KernelConfig(block_m=1, block_n=32, block_k=2 * qt.spec.param("group_size"), split_k=3, num_warps=4,
                          num_stages=2, half_dot=True)
    mod = kernel_module(qt.spec, "gemv", 1, N, K, cfg)
    assert "g = (rows * PER) // GS" in Path(mod.__file__).read_text()
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, 1, dtype, gen, bias=True, device=DEVICE)
        assert err < REL_TOL[dtype], f"{name} {dtype}: rel err {err:.2e}"
    x = torch.randn(1, K, generator=gen)
    x[0, :16] = 65504.0
    err = check_kernel(mod, qt, 1, torch.float16, gen, device=DEVICE, x=x)
    assert err < REL_TOL[torch.float16], f"{name} outliers: rel err {err:.2e}"


def test_half_dot_is_refused_where_no_decode_has_it(quantized):
    """half_dot needs a decode with fp16 pair products (part_dot at block_m 1: bnb, 2- and 4-bit packed ints): other
    formats (3-bit fields, AWQ's N-packed words) and families are refused by name, and the tuner's pruning agrees."""
    from autotune.prune import reject_reason
    from codegen.arch import get_arch
    qt, _, _ = quantized("awq")
    N, K = qt.shape
    cfg = ir.KernelConfig(block_m=1, block_n=32, block_k=32, half_dot=True)
    with pytest.raises(ir.SpecError, match="half_dot needs a decode with fp16 pair products.*awq has none"):
        kernel_module(qt.spec, "gemv", 1, N, K, cfg)
    with pytest.raises(ir.SpecError, match="half_dot applies to the gemv family at block_m 1"):
        kernel_module(qt.spec, "gemm", 16, N, K, ir.KernelConfig(block_m=16, half_dot=True))
    assert "half_dot needs" in reject_reason(qt.spec, get_arch("sm90"), "gemv", 1, 8192, 8192, cfg)
    assert "half_dot needs" in reject_reason(quantized("int3_g128_asym")[0].spec, get_arch("sm90"), "gemv", 1, 8192,
                                             8192, cfg)
    nf4, _, _ = quantized("bnb_nf4")
    assert reject_reason(nf4.spec, get_arch("sm90"), "gemv", 1, 8192, 8192,
                         ir.KernelConfig(block_m=1, block_n=64, block_k=64, split_k=4, half_dot=True)) is None


@pytest.mark.parametrize("name,block_k,split_k,block_n", [("gguf_q4_k", 64, 3, 32), ("gguf_q4_k", 256, 2, 64),
                                                          ("gguf_q2_k", 128, 3, 16)])
def test_gguf_kquant_half_dot(name, block_k, split_k, block_n, gen):
    """GGUF Q4_K and Q2_K at M=1 with half_dot read their blocks as stored, two weights per HFMA2 with the codes
    centred (8, 2), and add each sub-block's scale and min in fp32 (table_dot): against the reference for fp16 and
    bf16 x with a bias, split-K with a slice past K (split 3 on K = 512), columns past N (N = 40), the largest fp16
    activations across a whole sub-block, tiny activations, x at an odd element offset and three rows of x; tiles
    that split a chunk and the other GGUF types are refused by name, and the tuner's pruning agrees."""
    from autotune.prune import reject_reason
    from codegen.arch import get_arch
    spec = ir.get_format(name)
    N, K = 40, 512
    g = torch.Generator().manual_seed(1234)
    qt = ir.quantize(spec, torch.randn(N, K, generator=g) * 0.05)
    cfg = ir.KernelConfig(block_m=1, block_n=block_n, block_k=block_k, split_k=split_k, num_warps=4, num_stages=1,
                          half_dot=True)
    mod = kernel_module(spec, "gemv", 1, N, K, cfg)
    assert "acc2 += table_dot(" in Path(mod.__file__).read_text()
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, 1, dtype, gen, bias=True, device=DEVICE)
        assert err < REL_TOL[dtype], f"{name} {cfg.label} {dtype}: rel err {err:.2e}"
    x = torch.randn(1, K, generator=gen)
    x[0, 32:64] = 65504.0 * torch.sign(torch.randn(32, generator=gen))  # the largest fp16 values over sub-blocks
    err = check_kernel(mod, qt, 1, torch.float16, gen, device=DEVICE, x=x)
    assert err < REL_TOL[torch.float16], f"{name} {cfg.label} outliers: rel err {err:.2e}"
    err = check_kernel(mod, qt, 1, torch.float16, gen, device=DEVICE, x=torch.randn(1, K, generator=gen) * 1e-3)
    assert err < REL_TOL[torch.float16], f"{name} {cfg.label} tiny x: rel err {err:.2e}"
    xo = torch.randn(1, K + 1, generator=gen).to(torch.float16)[:, 1:]   # data_ptr % 4 == 2
    err = check_kernel(mod, qt, 1, torch.float16, gen, device=DEVICE, x=xo)
    assert err < REL_TOL[torch.float16], f"{name} {cfg.label} odd offset: rel err {err:.2e}"
    err = check_kernel(mod, qt, 3, torch.float16, gen, device=DEVICE)
    assert err < REL_TOL[torch.float16], f"{name} {cfg.label} M=3: rel err {err:.2e}"
    small = ir.KernelConfig(block_m=1, block_n=32, block_k=64 if name == "gguf_q2_k" else 32, half_dot=True)
    with pytest.raises(ir.SpecError, match=f"GGUF Q4_K at block_m 1 with block_k 64, 128 or 256.*{name} has none"):
        kernel_module(spec, "gemv", 1, N, K, small)
    arch = get_arch("sm90")
    assert "half_dot needs" in reject_reason(ir.get_format("gguf_q8_0"), arch, "gemv", 1, 8192, 8192, cfg)
    assert reject_reason(spec, arch, "gemv", 1, 8192, 8192, cfg) is None


@pytest.mark.parametrize("options", [dict(num_codebooks=2, nbits=8), dict(num_codebooks=1, nbits=8),
                                     dict(num_codebooks=4, nbits=6)])
def test_aqlm_x_table(options, gen):
    """AQLM at block_m 1 with small books reads a table of x's dot products with every codebook entry (x_table) instead
    of decoding: one gather per code from T (2 books: both codes in one 16-bit load; 1 book: a byte; 4 books of 6-bit
    codes: one 32-bit load, codes taken mod 2**nbits) against the reference with split-K slices of unequal length, bias,
    fp16 and bf16 x, three rows of x (one table row each), tiny x (1e-5) and fp16's largest x (the fp16 table's per-group
    power-of-two factors); the 65536-entry book and block_m 2 keep the decode."""
    spec = ir.get_format("aqlm", **options)
    N, K = 40, 512
    qt = ir.quantize(spec, torch.randn(N, K, generator=gen) * 0.05)
    for sk in (1, 3):
        cfg = ir.KernelConfig(block_m=1, block_n=32, block_k=64, split_k=sk, num_warps=4, num_stages=1)
        mod = kernel_module(spec, "gemv", 1, N, K, cfg)
        assert "acc2 += table_dot(" in Path(mod.__file__).read_text()
        for M, dtype in ((1, torch.float16), (3, torch.float16), (1, torch.bfloat16)):
            err = check_kernel(mod, qt, M, dtype, gen, bias=True, device=DEVICE)
            assert err < REL_TOL[dtype], f"{spec.name} {cfg.label} M={M} {dtype}: rel err {err:.2e}"
        for scale in (1e-5, 1.0):   # the table's per-group fp16 scaling: tiny x keeps its precision, fp16's largest
            x = torch.randn(1, K, generator=gen) * scale   # x stays finite in its group's dots
            x[0, 0] = 65504.0 if scale == 1.0 else x[0, 0]
            err = check_kernel(mod, qt, 1, torch.float16, gen, device=DEVICE, x=x)
            assert err < REL_TOL[torch.float16], f"{spec.name} {cfg.label} x * {scale:g}: rel err {err:.2e}"
    assert "table_dot" not in Path(kernel_module(spec, "gemv", 2, N, K, ir.KernelConfig(block_m=2, block_n=32, block_k=64)).__file__).read_text()
    big = ir.get_format("aqlm_1x16")
    assert "table_dot" not in Path(kernel_module(big, "gemv", 1, N, K, ir.KernelConfig(block_m=1, block_n=32, block_k=64)).__file__).read_text()
