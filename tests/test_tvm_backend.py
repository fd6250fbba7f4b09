"""TVM backend: the TVMScript kernels of every covered format, built for `llvm` and run on the CPU, match
x @ ir.dequantize(qt).T; the decode macros are bit-exact against the reference decoders; the CUDA build
(TVM -> CUDA C, nvcc -> cubin) writes deterministic artifacts with launch metadata; the cubin launcher
checks its arguments before launching; the families without a TVM decode are refused with the reason.
Formats with online transforms (higgs: Hadamard on x; watersic: col_scale on x; vptq: x[:, perm];
qtip: signs and whole-dimension Hadamards on x and y) decode their
core matrix C (y = T_in(x) @ C^T); the launcher's transform step (runtime/cubin.py run_transformed) runs around
the llvm kernel too, and is checked bit-exactly against the Triton entry point's own transform code.

Shapes are small and legal per format, N and K not multiples of the tiles (tests/kernel_harness.py)."""
import json
import subprocess
import sys

import pytest
import torch

import ir
from codegen import tvm_compat
from codegen.artifacts import build
from codegen.plan import lower
from ir import KernelConfig, SpecError
from ir.formats.higgs import decode_higgs_rotated
from ir.formats.qtip import decode_tiles
from ir.hadamard import block_hadamard
from ir.registry import get_codec
from ir.synthetic import synthetic_quantized
from kernel_harness import REL_TOL, check_kernel, kernel_module, small_problem
from runtime import cubin

pytestmark = pytest.mark.skipif(bool(tvm_compat.unavailable_reason()),
                                reason=f"TVM backend tests need TVM: {tvm_compat.unavailable_reason()}")

from codegen import tvm_backend as tb  # noqa: E402  (after the skip marker: importing it needs no TVM)

# formats that quantize activations: tests/test_tvm_actquant.py
COVERED = [n for n in ir.list_formats() if (f := ir.get_format(n)).family in tb.SUPPORTED and f.act_quant is None]
# option variants the presets do not reach: act-order g_idx, per-channel 8-bit, v1 3-bit, plain bnb absmax
VARIANTS = {
    "gptq[desc_act]": ("gptq", {"desc_act": True}),
    "gptq[b8,g-1]": ("gptq", {"bits": 8, "group_size": -1}),
    "gptq[b3,v1]": ("gptq", {"bits": 3, "checkpoint": "v1"}),
    "bnb_nf4[no_dq]": ("bnb_nf4", {"double_quant": False}),
    # smaller Hadamard blocks than the presets' 1024 (K = 3 x 1024 there): 6-bit p=2 fields straddle words
    "higgs[p2,b3,h256]": ("higgs", {"p": 2, "bits": 3, "group_size": 128, "hadamard_size": 256}),
    "watersic[b3]": ("watersic", {"bits": 3}),   # 10 fields per word, tail of 4
    "watersic[b8]": ("watersic", {"bits": 8}),   # int8 [N, K], no packing
    # 32 outlier columns with their own book, two groups of 32, int16 (unpacked) indices and int64 perm
    "vptq[o32,g32,u16]": ("vptq", {"vector_len": 4, "num_centroids": 256, "num_res_centroids": 16,
                                   "group_size": 32, "outlier_size": 32, "outlier_vector_len": 4,
                                   "num_outlier_centroids": 64, "packed": False}),
}
# decode paths the presets do not reach, checked through the decode-only kernel (the same macro text the
# matmul kernels plug in; their presets run the full kernels above)
DECODE_VARIANTS = {
    # matryoshka: 10 / 5 fields per word (two high bits unused), symmetric zeros
    "matryoshka[r3]": ("matryoshka", {"r": 3, "group_size": 32}),
    "matryoshka[r6,sym]": ("matryoshka", {"r": 6, "sym": True, "group_size": 64}),
    # ccq: code table, unclustered int16 codes with seq_len 3, bf16 scales (cluster and WINT2.5)
    "ccq[table]": ("ccq", {"code_map": "table"}),
    "ccq[L4,N3,S3]": ("ccq", {"clustered": False, "L": 4, "N": 3, "S": 3, "group_size": 48}),
    "ccq_wint2[bf16]": ("ccq_wint2", {"scale_dtype": "bfloat16"}),
    "ccq_wint2_5[bf16]": ("ccq_wint2_5", {"scale_dtype": "bfloat16"}),
    # aqlm: 2x4 blocks (codebook rows span two outputs), three books of 6-bit codes
    "aqlm[3x6,g2x4]": ("aqlm", {"num_codebooks": 3, "nbits": 6, "out_group_size": 2, "in_group_size": 4}),
    "higgs[p1,b2,h64]": ("higgs", {"p": 1, "bits": 2, "group_size": 64, "hadamard_size": 64}),
    "watersic[b5]": ("watersic", {"bits": 5}),
    # vptq: packed 15-bit merged fields straddling words, groups and outliers; no residual, perm or norm
    "vptq[o32,g32,b15]": ("vptq", {"vector_len": 2, "num_centroids": 4096, "num_res_centroids": 8,
                                   "group_size": 32, "outlier_size": 32, "num_outlier_centroids": 16}),
    "vptq[v3,plain]": ("vptq", {"vector_len": 3, "num_centroids": 64, "num_res_centroids": 0,
                                "perm": False, "norm": False}),
}
# decoded from synthetic codes only (QtipCodec.synthetic: random words, every stream a valid tail-biting path;
# the Viterbi encoder is too slow for CI): states straddling words (K=3), HYB V=1 / Q=8, the tile layout with the
# computed codes 1MAD / 3INST
SYNTHETIC_VARIANTS = {
    "qtip[K3]": ("qtip", {"K": 3}),
    "qtip[K4,V1]": ("qtip", {"K": 4, "V": 1}),
    "qtip[Q8]": ("qtip", {"Q": 8}),
    "qtip[1mad]": ("qtip", {"code": "1mad"}),
    "qtip[3inst,K3]": ("qtip", {"code": "3inst", "K": 3}),
}
CASES = {n: (n, {}) for n in COVERED} | VARIANTS
ALL_CASES = CASES | DECODE_VARIANTS


@pytest.fixture(scope="module")
def quantized():
    cache = {}

    def get(case):
        if case not in cache:
            name, opts = ALL_CASES[case]
            spec = ir.get_format(name, **opts)
            N, K, gemv, gemm = small_problem(spec)
            g = torch.Generator().manual_seed(1234)
            calib = {"perm": torch.randperm(K, generator=g)} if opts.get("desc_act") else {}
            cache[case] = (ir.quantize(spec, torch.randn(N, K, generator=g) * 0.05, **calib), gemv, gemm)
        return cache[case]
    return get


def core_matrix(qt) -> torch.Tensor:
    """C of y = T_in(x) @ C^T, what the decode macro computes: ir.dequantize(qt) without the online transforms."""
    N, K = qt.shape
    if qt.spec.family == "higgs":   # the weight in the Hadamard-rotated basis
        return decode_higgs_rotated(qt.spec, qt.tensors, N, K).float()
    if qt.spec.family == "watersic":   # row_scale * (Z * 1): col_scale is folded into x
        return get_codec(qt.spec).dequantize(qt.spec, dict(qt.tensors, col_scale=torch.ones(K)), N, K)
    if qt.spec.family == "vptq" and qt.spec.param("perm"):   # the launcher gathers x[:, perm]
        return ir.dequantize(qt)[:, qt.tensors["perm"].to(torch.int64) & 0xFFFF]
    if qt.spec.family == "qtip":   # the trellis matrix What: the launcher applies SU, H_K on x and H_N, SV on y
        return decode_tiles(qt.spec, qt.tensors["trellis"], N, K, qt.tensors.get("tlut"))
    assert not qt.spec.transforms, f"{qt.spec.name}: say how its core matrix is decoded"
    return ir.dequantize(qt)


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_decode_macro_is_bit_exact(case, quantized):
    qt, gemv, _ = quantized(case)
    N, K = qt.shape
    plan = lower(qt.spec, 1, N, K, gemv, "sm90", family="gemv")
    W, C = tb.dequant_cpu(plan, qt.tensors, N, K), core_matrix(qt)
    assert torch.equal(W, C), f"{case}: max |diff| {(W - C).abs().max():.3g}"


@pytest.mark.parametrize("case", [c for c in ALL_CASES if ALL_CASES[c][0].startswith(("vptq", "qtip"))]
                         + list(SYNTHETIC_VARIANTS))
def test_decode_is_bit_exact_on_full_range_codes(case):
    """vptq: the encoder's small-shape codes use few codebook entries (and zero residuals): random merged words,
    every index value and straddling field up to the top bits, and random uint16 perms, through the same macro.
    qtip: random trellis words reach every state, hence every tlut row, sign and computed-code value."""
    name, opts = (ALL_CASES | SYNTHETIC_VARIANTS)[case]
    spec = ir.get_format(name, **opts)
    N, K, gemv, _ = small_problem(spec)
    qt = synthetic_quantized(spec, N, K, seed=7)
    W = tb.dequant_cpu(lower(spec, 1, N, K, gemv, "sm90", family="gemv"), qt.tensors, N, K)
    assert torch.equal(W, core_matrix(qt))


def _mma_config(K: int) -> KernelConfig:
    """A small tensor-core gemm config: 2 warps x 2 n-tiles, split-K when K allows it."""
    return KernelConfig(block_m=16, block_n=32, block_k=32, split_k=2 if K >= 64 else 1, num_warps=2)


def _check_family(qt, family, cfg, Ms, gen, case):
    N, K = qt.shape
    plan = lower(qt.spec, Ms[0], N, K, cfg, "sm90", family=family)
    kern = tb.CpuKernel(plan)
    for M in Ms:
        for dtype in (torch.float16, torch.bfloat16):
            err = check_kernel(kern, qt, M, dtype, gen, bias=M in (3, 33))
            assert err < REL_TOL[dtype], f"{case} {tb.template_for(plan)} M={M} {dtype}: rel err {err:.2e}"
    return plan


@pytest.mark.parametrize("case", list(CASES))
def test_kernels_match_reference_on_llvm(case, quantized, gen):
    """gemv (SIMT) for M in {1, 3}; the tensor-core gemm, its mma emulated per warp on llvm, for M in {16, 33}."""
    qt, gemv, _ = quantized(case)
    assert tb.template_for(_check_family(qt, "gemv", gemv, (1, 3), gen, case)) == "tvm/gemv.py.jinja"
    mma = _check_family(qt, "gemm", _mma_config(qt.shape[1]), (16, 33), gen, case)
    assert tb.template_for(mma) == "tvm/gemm_mma.py.jinja"


@pytest.mark.parametrize("case", ["gptq[b3,v1]", "awq", "eqat_w3g128", "gguf_q4_k", "bnb_nf4"])
def test_simt_gemm_fallback_matches_reference_on_llvm(case, quantized, gen):
    """Configs the mma schedule cannot tile (block_n < 8 x warps) fall back to the SIMT gemm."""
    qt, _, gemm = quantized(case)
    plan = _check_family(qt, "gemm", gemm, (16, 33), gen, case)
    assert tb.template_for(plan) == "tvm/gemm.py.jinja"


def test_schedule_layouts_and_refusals():
    spec = ir.get_format("gptq")
    plan = lower(spec, 1, 4096, 4096, KernelConfig(block_m=1, block_n=128, block_k=128, split_k=4), "sm90",
                 family="gemv")
    s = tb.schedule(plan)
    assert (s.fast, s.TN * s.VN * s.RN, s.TK * s.VK * s.RK, s.THREADS) == ("N", 128, 128, 128)
    gguf = lower(ir.get_format("gguf_q4_0"), 1, 4096, 4096, plan.config, "sm90", family="gemv")
    assert tb.schedule(gguf).fast == "K" and tb.schedule(gguf).TK > 1
    big = KernelConfig(block_m=128, block_n=16, block_k=64)
    with pytest.raises(SpecError, match="cannot be tiled by the TVM gemm schedule"):
        tb.schedule(lower(spec, 128, 4096, 4096, big, "sm90", family="gemm"))
    assert tb.fit_config(lower(spec, 128, 4096, 4096, big, "sm90", family="gemm")).block_m == 32


def test_uncovered_families_are_refused_with_the_reason(monkeypatch):
    """Every registered family is covered; one that is not (here: gptq taken out) is refused at build time."""
    assert {ir.get_format(n).family for n in ir.list_formats()} <= set(tb.SUPPORTED)
    monkeypatch.setattr(tb, "SUPPORTED", tuple(f for f in tb.SUPPORTED if f != "gptq"))
    spec = ir.get_format("gptq")
    N, K, gemv, _ = small_problem(spec)
    with pytest.raises(SpecError, match="does not cover format 'gptq'.*no TVM decode macro is written for it"):
        tb.render_tvm(lower(spec, 1, N, K, gemv, "sm90", family="gemv"))


@pytest.mark.parametrize("name", ["qtip", "vptq", "higgs_p1_b4", "watersic"])
@pytest.mark.parametrize("split_k", [1, 2])
def test_launcher_transforms_match_the_triton_entry_point(name, split_k, gen):
    """runtime/cubin.py's transform step (input transforms, y allocation, output transforms, then the bias)
    against the generated Triton entry point's, both around the same stand-in kernel (y = x2 @ C^T in fp32,
    + bias when the kernel is asked to add it): bit-exact, for every transform kind (qtip: signs and Hadamard on
    x and y; vptq: int16 permutation; higgs: 1024-block Hadamard; watersic: col_scale)."""
    spec = ir.get_format(name)
    N, K, gemv, _ = small_problem(spec)
    cfg = KernelConfig(**{**gemv.to_dict(), "split_k": split_k, "block_k": 32 if split_k > 1 else gemv.block_k})
    qt = synthetic_quantized(spec, N, K, seed=5)
    C = torch.randn(N, K, generator=gen)

    def fake(x2, y, bias, has_bias):
        acc = x2.float() @ C.T + (bias.float() if has_bias else 0.0)
        y.copy_(acc)   # both write the whole product (the TVM launcher zeroes its split-K y, Triton's is empty)

    plan = lower(spec, 3, N, K, cfg, "sm90", family="gemv")
    mod = kernel_module(spec, "gemv", 3, N, K, cfg)

    class Launch:
        def __getitem__(self, grid):
            return lambda x2, y, bias, *args, HAS_BIAS, **kw: fake(x2, y, bias, HAS_BIAS)

    setattr(mod, plan.name, Launch())
    meta = json.loads(json.dumps(tb._transform_meta(plan, tb.schedule(plan))))   # as the manifest stores it
    assert meta["input_transforms"] == [t.to_dict() for t in spec.transforms if t.side == "input"]
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(2, 3, K, generator=gen).to(dtype)
        b = torch.randn(N, generator=gen).to(dtype)
        for bias in (None, b):
            want = mod.run(x, qt.tensors, N, bias=bias)
            got = cubin.run_transformed(meta, x, qt.tensors, N, bias, None,
                                        lambda x2, y, has_bias: fake(x2, y, bias, has_bias))
            assert got.dtype == dtype and got.shape == (2, 3, N) and torch.equal(got, want), (name, dtype, bias)
            out = torch.full((2, 3, N), float("nan"), dtype=dtype)
            got = cubin.run_transformed(meta, x, qt.tensors, N, bias, out,
                                        lambda x2, y, has_bias: fake(x2, y, bias, has_bias))
            assert got is out and torch.equal(out, want)


def test_launcher_hadamard_and_uint16_permutation():
    """The butterfly is the normalized Sylvester block Hadamard (ir.hadamard, float64) up to rounding; int16
    permutation indices above 32767 are read as uint16."""
    v = torch.randn(3, 2048, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(cubin.hadamard(v, 512, True), block_hadamard(v, 512), atol=1e-5)
    K = 40000
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, K).half()
    tr = {"kind": "permutation", "side": "input", "placement": "online", "size": 0, "normalized": True,
          "tensor": "perm"}
    got = cubin.transform_input([tr], x, {"perm": perm.to(torch.int16)})
    assert (perm > 32767).any() and torch.equal(got, x[:, perm])


def test_ccq_affine_code_map_is_one_fma():
    """Arbitrary float32 code maps, where z * a + b rounded twice sometimes differs from one fma: the decode
    matches the reference's single-rounding fma (the encoder's own maps are exact either way)."""
    spec = ir.get_format("ccq_wint2")
    N, K = 400, 128
    g = torch.Generator().manual_seed(0)
    t = {"weight": torch.randint(0, 256, (K // 4, N), generator=g, dtype=torch.uint8),
         "local_scale": torch.randint(0, 256, (K // 128, N), generator=g, dtype=torch.uint8),
         "code_scale": 112 + 16 * torch.rand(N, generator=g), "code_zp": 300 * torch.rand(N, generator=g),
         "super_scale": (torch.rand(N, generator=g) * 1e-3).half()}
    z = t["weight"].float()
    two_roundings = torch.floor(z * t["code_scale"] + t["code_zp"] + 0.5)
    fma = torch.floor((z.double() * t["code_scale"].double() + t["code_zp"].double()).float() + 0.5)
    assert not torch.equal(two_roundings, fma), "the random maps must tell fma from mul + add"
    gemv = KernelConfig(block_m=1, block_n=16, block_k=64, num_warps=4)
    W = tb.dequant_cpu(lower(spec, 1, N, K, gemv, "sm90", family="gemv"), t, N, K)
    assert torch.equal(W, get_codec(spec).dequantize(spec, t, N, K))


@pytest.mark.parametrize("name", ["gptq", "awq", "eqat_w3g128", "gguf_q4_k", "bnb_nf4", "ccq_wint2", "higgs",
                                  "watersic"])
def test_cuda_source_and_launch_metadata(name):
    spec = ir.get_format(name)
    N, K, gemv, _ = small_problem(spec)
    plan = lower(spec, 1, N, K, gemv, "sm90", family="gemv")
    script = tb.render_tvm(plan, "cuda")
    assert script == tb.render_tvm(plan, "cuda"), "rendering must be deterministic"
    assert 'thread="threadIdx.x"' in script and "T.serial" not in tb.module_text(script).split("range(k_iters)")[0]
    cuda = tvm_compat.compile_cuda(tb.module_text(script), plan.name, "sm_90a")
    meta = tb.launch_metadata(plan, cuda, {})
    assert set(meta["symbols"]) == {"float16", "bfloat16"}
    names = [p["name"] for p in meta["params"]]
    assert {"x", "y", "bias", "has_bias"} <= set(names) and set(names) <= {"x", "y", "bias", "M", "N", "K", "has_bias",
                                                                         *plan.tensor_names}
    assert (gemv.split_k > 1) == ("atomic_add" in cuda) == meta["zero_init_y"]
    assert meta["input_transforms"] == [t.to_dict() for t in spec.transforms if t.side == "input"]
    assert meta["output_transforms"] == [t.to_dict() for t in spec.transforms if t.side == "output"]
    mma = lower(spec, 16, N, K, _mma_config(K), "sm90", family="gemm")
    cuda = tvm_compat.compile_cuda(tb.module_text(tb.render_tvm(mma, "cuda")), mma.name, "sm_90a")
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in cuda
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in cuda
    assert tb.launch_metadata(mma, cuda, {})["block"] == [64, 1, 1]


def _launcher_entry(tmp_path):
    spec = ir.get_format("gguf_q4_0")
    N, K, gemv, _ = small_problem(spec)
    plan = lower(spec, 1, N, K, gemv, "sm90", family="gemv")
    cuda = tvm_compat.compile_cuda(tb.module_text(tb.render_tvm(plan, "cuda")), plan.name, "sm_90a")
    (tmp_path / "launcher_under_test.py").write_text(tb.launcher_source())
    return {"name": plan.name, "files": {"cubin": "absent.cubin"}, "launch": tb.launch_metadata(plan, cuda, {})}, N, K


def test_cubin_launcher_checks_arguments_before_launch(tmp_path, gen):
    entry, N, K = _launcher_entry(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        import launcher_under_test as lu
    finally:
        sys.path.remove(str(tmp_path))
    kern = lu.CubinKernel(tmp_path, entry)
    qt = ir.quantize(ir.get_format("gguf_q4_0"), torch.randn(N, K, generator=gen))
    x = torch.randn(1, K, generator=gen).half()
    with pytest.raises(TypeError, match="dtype"):
        kern(x.float(), qt.tensors, N)
    with pytest.raises(KeyError, match="missing tensor 'blocks'"):
        kern(x, {}, N)
    with pytest.raises(ValueError, match="tensor 'blocks' has shape"):
        kern(x, {"blocks": qt.tensors["blocks"][:, :-1].contiguous()}, N)
    with pytest.raises(ValueError, match="must be contiguous"):
        kern(x, {"blocks": qt.tensors["blocks"].t().contiguous().t()}, N)
    with pytest.raises(ValueError, match="bias must be"):
        kern(x, qt.tensors, N, bias=torch.zeros(N + 1, dtype=torch.float16))
    with pytest.raises(ValueError, match="out must be"):
        kern(x, qt.tensors, N, out=torch.empty(1, N, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="multiples of"):
        kern(x[:, :-1], qt.tensors, N)
    with pytest.raises(ValueError, match="CUDA device"):
        kern(x, qt.tensors, N)


def test_cubin_launcher_needs_the_transform_tensors(tmp_path, gen):
    """watersic's col_scale is read by the launcher's input transform, not by the kernel: still required."""
    spec = ir.get_format("watersic")
    N, K, gemv, _ = small_problem(spec)
    plan = lower(spec, 1, N, K, gemv, "sm90", family="gemv")
    cuda = tvm_compat.compile_cuda(tb.module_text(tb.render_tvm(plan, "cuda")), plan.name, "sm_90a")
    kern = cubin.CubinKernel(tmp_path, {"name": plan.name, "files": {"cubin": "absent.cubin"},
                                        "launch": tb.launch_metadata(plan, cuda, {})})
    qt = synthetic_quantized(spec, N, K, seed=0)
    with pytest.raises(KeyError, match="missing tensor 'col_scale'"):
        kern(torch.randn(1, K, generator=gen).half(), {k: v for k, v in qt.tensors.items() if k != "col_scale"}, N)


def test_missing_nvcc_is_a_clear_build_error(monkeypatch, tmp_path):
    monkeypatch.setattr(tb.shutil, "which", lambda _: None)
    monkeypatch.setattr(tb, "NVCC_FALLBACKS", ())
    with pytest.raises(SpecError, match="nvcc not found"):
        build(ir.get_format("gguf_q4_0"), "sm90", tmp_path, "tvm", shapes=[(64, 256)], batches=[1])


@pytest.mark.skipif(not (tb.shutil.which("nvcc") or any(map(tb.os.path.exists, tb.NVCC_FALLBACKS))),
                    reason="nvcc is not installed: the cubin build step needs the CUDA toolkit")
def test_build_writes_deterministic_cubin_artifacts(tmp_path):
    spec = ir.get_format("gguf_q4_0")
    m1 = build(spec, "sm90", tmp_path / "a", "all", shapes=[(64, 256)], batches=[1])
    build(spec, "sm90", tmp_path / "b", "all", shapes=[(64, 256)], batches=[1])
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f"{f} differs"
    assert [k["backend"] for k in m1["kernels"]] == ["triton", "tvm"]
    k = m1["kernels"][1]
    assert {k["files"][f] for f in ("tvmscript", "cuda", "cubin")} <= set(files) and "tvm_launcher.py" in files
    assert k["launch"]["block"] == [tb.schedule(lower(spec, 1, 64, 256, KernelConfig(**k["config"]), "sm90")).THREADS,
                                    1, 1]
    res = k["launch"]["resources"]["float16"]
    assert res["registers"] > 0 and res["static_shared_bytes"] > 0 and "spill_bytes" in res
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == m1
    # the launcher is standalone: in a fresh isolated interpreter it imports nothing of quantcc
    code = (f"import sys; sys.path.insert(0, {str(tmp_path / 'a')!r}); import tvm_launcher; "
            f"assert not {{'ir', 'codegen', 'runtime'}} & set(sys.modules), sorted(sys.modules); "
            f"print(tvm_launcher.find({str(tmp_path / 'a')!r}, 1, 64, 256))")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == k["name"], r.stderr


def test_a_tvm_build_failure_is_a_spec_error_naming_the_kernel(monkeypatch):
    pytest.importorskip("tvm")
    import tvm

    def boom(mod, target):
        raise tvm.error.InternalError("Traceback ...\nUnresolved call tirx.fma")

    monkeypatch.setattr(tvm, "compile", boom)
    monkeypatch.setattr(tvm_compat, "parse", lambda source, label: object())  # only the build step is under test
    with pytest.raises(ir.SpecError, match="TVM cannot build demo_kernel for llvm: Unresolved call tirx.fma"):
        tvm_compat.compile_llvm("<module>", "demo_kernel")
    with pytest.raises(ir.SpecError, match="TVM cannot build demo_kernel for cuda/sm_90a: Unresolved call"):
        tvm_compat.compile_cuda("<module>", "demo_kernel", "sm_90a")
