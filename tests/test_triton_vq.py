"""Triton kernels of the vector-codebook families (VPTQ, AQLM, HIGGS) at non-default options, on synthetic
tensors, and the facts their decode templates rely on (CPU: TRITON_INTERPRET=1, set by conftest).

The reference is x @ ir.dequantize(W).T (tests/kernel_harness.check_kernel, NaN-prefilled output). The
templates compute the core matrix C of y = T_in(x) @ C^T: for VPTQ the stored columns with the norm of the
input column perm[c] (the entry point gathers x[:, perm]); for HIGGS the weight in the rotated basis (the
entry point applies the block Hadamard), while ir.dequantize returns the effective W = C @ H.
"""
import dataclasses

import pytest
import torch

import ir
from codegen.plan import lower
from codegen.triton_backend import render_triton
from ir.synthetic import synthetic_quantized
from kernel_harness import REL_TOL, check_kernel, kernel_module, small_problem

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float16, torch.bfloat16)
FAMILIES = ("vptq", "aqlm", "higgs")
REGISTERED = [n for n in ir.list_formats() if ir.get_format(n).family in FAMILIES]

# (format, options, (N, K) or None for small_problem's): options other than the registered defaults
VARIANTS = [
    # unpacked int16 indices + residual indices, outlier block of 32 columns, groups of 48 (K = 32 + 2 * 48)
    ("vptq", dict(num_centroids=256, num_res_centroids=16, outlier_size=32, num_outlier_centroids=64,
                  group_size=48, packed=False), (40, 128)),
    # packed 10-bit stream, vector_len 6 (N = 40 pads the last vector), outliers with their own vector_len
    ("vptq", dict(vector_len=6, num_centroids=1024, num_res_centroids=0, group_size=32, outlier_size=32,
                  outlier_vector_len=4, num_outlier_centroids=128), None),
    ("vptq", dict(num_centroids=4096, num_res_centroids=4096, perm=False), None),       # 24-bit fields, norm only
    ("vptq", dict(vector_len=4, num_centroids=256, num_res_centroids=0, norm=False), None),  # perm only
    ("vptq", dict(num_centroids=64, num_res_centroids=8, packed=False, norm=False), None),   # int64 perm
    ("aqlm", dict(num_codebooks=3, nbits=6, out_group_size=2), None),                     # int8 codes, 2 x 8 blocks
    ("aqlm", dict(num_codebooks=2, nbits=12, in_group_size=4, out_group_size=4), None),   # int16 codes below 16 bits
    ("aqlm", dict(num_codebooks=1, nbits=8, in_group_size=16), None),
    ("higgs", dict(p=1, bits=3, group_size=64, hadamard_size=256), None),                # 3-bit straddling fields
    ("higgs", dict(p=2, bits=3, group_size=128, hadamard_size=256), None),               # 6-bit straddling fields
    ("higgs", dict(p=2, bits=2, group_size=64, hadamard_size=64), None),
]
VARIANT_IDS = [f"{n}-" + "-".join(f"{k}{v}" for k, v in o.items()) for n, o, _ in VARIANTS]


def _module(qt, M, swap_ab=False):
    N, K = qt.shape
    _, _, gemv, gemm = small_problem(qt.spec)
    family, cfg = ("gemv", gemv) if M <= 4 else ("gemm", dataclasses.replace(gemm, swap_ab=swap_ab))
    return kernel_module(qt.spec, family, M, N, K, cfg)


def _quantized(name, opts, shape, gen):
    spec = ir.get_format(name, **opts)
    N, K = shape or small_problem(spec)[:2]
    return ir.quantize(spec, torch.randn(N, K, generator=gen) * 0.05)


@pytest.mark.parametrize("name,opts,shape", VARIANTS, ids=VARIANT_IDS)
def test_kernel_variants(name, opts, shape, gen):
    qt = _quantized(name, opts, shape, gen)
    for M in (1, 3, 33):
        mod = _module(qt, M)
        for dtype in DTYPES:
            err = check_kernel(mod, qt, M, dtype, gen, bias=(M == 3), device=DEVICE)
            assert err < REL_TOL[dtype], f"{qt.spec.name} {opts} M={M} {dtype}: rel err {err:.2e}"


@pytest.mark.parametrize("name,opts", [("vptq", {}), ("aqlm", dict(num_codebooks=2, nbits=8)),
                                       ("higgs", dict(p=1, bits=4, group_size=64, hadamard_size=256))])
def test_gemm_swap_ab(name, opts, gen):
    """The decoded tile also works as the MMA's A operand."""
    spec = ir.get_format(name, **opts)
    qt = ir.quantize(spec, torch.randn(*small_problem(spec)[:2], generator=gen) * 0.05)
    mod = _module(qt, 33, swap_ab=True)
    for dtype in DTYPES:
        err = check_kernel(mod, qt, 33, dtype, gen, bias=True, device=DEVICE)
        assert err < REL_TOL[dtype], f"{name} swap_ab {dtype}: rel err {err:.2e}"


@pytest.mark.parametrize("name", REGISTERED)
def test_synthetic_tensors_run_through_the_kernel(name, gen):
    """Synthetic tensors (GPU benchmarks use them at real shapes) are valid and the kernel matches on them."""
    spec = ir.get_format(name)
    N, K = 32, spec.k_multiple * max(1, 256 // spec.k_multiple)
    qt = synthetic_quantized(spec, N, K, seed=5)
    assert torch.isfinite(ir.dequantize(qt)).all()
    for M in (1, 16):
        err = check_kernel(_module(qt, M), qt, M, torch.float16, gen, device=DEVICE)
        assert err < REL_TOL[torch.float16], f"{name} synthetic M={M}: rel err {err:.2e}"


def test_synthetic_vptq_indices_valid_for_every_layout():
    spec = ir.get_format("vptq", num_centroids=256, num_res_centroids=16, outlier_size=32, num_outlier_centroids=64,
                         group_size=48, packed=False)
    t = synthetic_quantized(spec, 40, 128).tensors
    for name, entries in (("indices", 256), ("res_indices", 16), ("outlier_indices", 64)):
        assert int((t[name].to(torch.int64) & 0xFFFF).max()) < entries, name
    assert torch.equal(t["perm"].sort().values, torch.arange(128))


def test_vptq_packed_perm_above_int16_range(gen):
    """K > 32768: the packed layout's int16 perm holds uint16 values; the entry point must not read them as
    negative indices (the template's `prepare` widens them before the base's x[:, perm] gather)."""
    spec = ir.get_format("vptq", num_centroids=256, num_res_centroids=0)
    N, K = 8, 40000
    qt = synthetic_quantized(spec, N, K, seed=1)
    assert (qt.tensors["perm"] < 0).any()
    cfg = ir.KernelConfig(block_m=1, block_n=16, block_k=512, split_k=2, num_warps=4, num_stages=1)
    mod = kernel_module(spec, "gemv", 1, N, K, cfg)
    err = check_kernel(mod, qt, 1, torch.float16, gen, device=DEVICE)
    assert err < REL_TOL[torch.float16], f"rel err {err:.2e}"


def test_vptq_core_matrix_identity(gen):
    """What the VPTQ template computes: with W' the stored columns (no perm, no norm) and W = ir.dequantize,
    x @ W^T == x[:, perm] @ C^T for C[:, c] = fp16(W'[:, c] * s[perm[c]]) + b[perm[c]]."""
    spec = ir.get_format("vptq", num_centroids=256, num_res_centroids=16, outlier_size=16, num_outlier_centroids=32)
    N, K = 24, 80
    qt = ir.quantize(spec, torch.randn(N, K, generator=gen) * 0.05)
    t = qt.tensors
    raw = ir.get_format("vptq", num_centroids=256, num_res_centroids=16, outlier_size=16, num_outlier_centroids=32,
                        perm=False, norm=False)
    Wp = ir.dequantize(ir.QuantizedTensor(raw, (N, K), {k: v for k, v in t.items()
                                                         if k not in ("perm", "weight_scale", "weight_bias")}))
    perm = t["perm"].to(torch.int64) & 0xFFFF
    C = (Wp.half() * t["weight_scale"][perm]) + t["weight_bias"][perm]
    x = torch.randn(3, K, generator=gen, dtype=torch.float64)
    W = ir.dequantize(qt).double()
    assert torch.allclose(x @ W.T, x[:, perm] @ C.double().T, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(x @ W.T, x[:, torch.argsort(perm)] @ C.double().T, atol=1e-3)  # the other direction


def test_higgs_kernel_reads_the_stored_grid(gen):
    """The grid is a stored tensor (HiggsLinear's tables): decode and kernel both use it, not the published one."""
    spec = ir.get_format("higgs", p=2, bits=2, group_size=64, hadamard_size=64)
    qt = ir.quantize(spec, torch.randn(*small_problem(spec)[:2], generator=gen) * 0.05)
    other = ir.QuantizedTensor(spec, qt.shape, dict(qt.tensors, grid=(qt.tensors["grid"].float() * -1.5).half()))
    W, W_other = ir.dequantize(qt), ir.dequantize(other)
    assert ((W_other + 1.5 * W).norm() / W.norm()).item() < 2e-3   # fp16 roundings of the grid and products
    err = check_kernel(_module(other, 1), other, 1, torch.float16, gen, device=DEVICE)
    assert err < REL_TOL[torch.float16], f"rel err {err:.2e}"


@pytest.mark.parametrize("name", [n for n in REGISTERED if ir.get_format(n).family in ("vptq", "aqlm")])
def test_presets_render_the_fast_decode(name):
    """The registered AQLM / VPTQ presets use decode_tile_fast (one code and one contiguous codebook gather
    per vector), so the kernel tests above exercise it."""
    spec = ir.get_format(name)
    N, K, gemv, _ = small_problem(spec)
    src = render_triton(lower(spec, 1, N, K, gemv, "sm90", family="gemv"))
    assert "w = decode_tile_fast(" in src


@pytest.mark.parametrize("name,opts,block_n", [
    ("vptq", dict(vector_len=16, num_centroids=256, num_res_centroids=16), 8),       # a tile cuts a vector
    ("aqlm", dict(num_codebooks=2, nbits=8, out_group_size=32), 16),                 # a tile cuts an output group
])
def test_fast_decode_falls_back_when_a_tile_cuts_a_vector(name, opts, block_n, gen):
    qt = _quantized(name, opts, None, gen)
    N, K = qt.shape
    cfg = ir.KernelConfig(block_m=1, block_n=block_n, block_k=32, split_k=2, num_warps=4, num_stages=1)
    mod = kernel_module(qt.spec, "gemv", 1, N, K, cfg)
    err = check_kernel(mod, qt, 1, torch.float16, gen, device=DEVICE)
    assert err < REL_TOL[torch.float16], f"{name} {opts} block_n={block_n}: rel err {err:.2e}"


def test_fp16_sum_through_fp32_is_the_rounded_fp16_sum(gen):
    """The AQLM fast path adds two books in fp16: fp16(fp32(a) + fp32(b)) equals the correctly rounded fp16
    sum (fp32 keeps 24 >= 2 * 11 + 2 bits, so rounding twice is exact). Checked against a single rounding of
    the exact float64 sum on every fp16 value a against random and adversarial b."""
    a = torch.arange(-(2 ** 15), 2 ** 15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    a = a[torch.isfinite(a)]
    special = torch.tensor([0.0, 2.0 ** -24, -(2.0 ** -24), 1.0, -1.0, 65504.0, 2.0 ** -14, 1.0 + 2.0 ** -10,
                            3 * 2.0 ** -12], dtype=torch.float16)
    rand = (torch.randn(48, generator=gen) * torch.logspace(-6, 4, 48)).half()
    for b in torch.cat([special, rand]):
        via32 = (a.float() + b.float()).half()
        exact = (a.double() + b.double()).half()
        assert torch.equal(via32.view(torch.int16), exact.view(torch.int16)), float(b)
