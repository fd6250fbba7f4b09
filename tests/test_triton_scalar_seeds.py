"""Triton kernels of the scalar families (matryoshka, prefixquant_w4a4, w8a8_static, watersic) at non-default
options, against the pure-torch references, on NaN-prefilled outputs (CPU: TRITON_INTERPRET=1, set by conftest).

Reference semantics, y = T_out(T_in(x) @ C^T) with the spec's online transforms:
- no activation quantization (matryoshka, watersic): y = x @ W^T with W = ir.dequantize (the effective weight;
  watersic's col_scale is an online input transform, so its core tile is row_scale * Z).
- activation quantization (prefixquant_w4a4, w8a8_static): y = quant(T_in(x)) @ C^T, C = ir.dequantize (for
  prefixquant with online_hadamard, C is the weight in the rotated basis, as ir.formats.prefixquant documents).
  ir.reference.reference_matmul applies the input transforms before quantizing. The entry point computes the Hadamard in fp32 and rounds the result
  to x's dtype before the prologue quantizes it (PrefixQuant's fast_hadamard_transform also returns x's dtype),
  so the reference rounds the same way.

fp8 under the interpreter: triton 3.6's interpreter converts fp32 -> e4m3 by truncation plus a round-half-up
bit with no carry into odd exponents (7.9 -> 4.0, 1.99 -> 1.0; ties go up, not to even), so the prologue's
x.to(tl.float8e4nv) is wrong there. tl.dot on exact fp8 operands and fp8 loads are fine. The interpreter test
therefore feeds activations whose x / act_scale are already e4m3 values (conversion exact); the test with
ordinary activations needs a GPU.
"""
import dataclasses

import pytest
import torch

import ir
from ir.actquant import quantize_activation_ref
from ir.hadamard import block_hadamard
from ir.reference import reference_matmul
from ir.synthetic import synthetic_quantized
from ir.tensor import QuantizedTensor
from kernel_harness import REL_TOL, check_kernel, kernel_module, small_problem

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float16, torch.bfloat16)

# (format, options, calibration): options other than each format's defaults (the defaults run in test_triton_kernels)
VARIANTS = [
    ("matryoshka", dict(r=2), {}),
    ("matryoshka", dict(r=3, group_size=64, sym=True), {}),     # 10 fields per word, 2 high bits unused, tail
    ("matryoshka", dict(r=6), {}),                              # 5 fields per word
    ("matryoshka", dict(r=8, group_size=32, sym=True), {}),     # shift 0: the parent itself
    ("prefixquant_w4a4", dict(), dict(act_absmax=2.0)),
    ("prefixquant_w4a4", dict(online_hadamard=True, had_size=64), dict(act_absmax=2.0)),
    ("prefixquant_w4a4", dict(online_hadamard=True, had_size=128), dict(act_absmax=2.0)),
    ("w8a8_static", dict(), dict(act_absmax=2.0)),
    ("watersic", dict(bits=2), {}),
    ("watersic", dict(bits=3), {}),                             # 10 fields per word, tail of 4
    ("watersic", dict(bits=5), {}),
    ("watersic", dict(bits=6), {}),
    ("watersic", dict(bits=7), {}),
    ("watersic", dict(bits=8), {}),                             # int8 [N, K], no packing
]
VARIANT_IDS = [f"{n}-" + "-".join(f"{k}{v}" for k, v in o.items()) for n, o, _ in VARIANTS]


def ref_forward(qt, x: torch.Tensor) -> torch.Tensor:
    """The kernel's math in float64 (see the module docstring): ir.reference.reference_matmul."""
    return reference_matmul(qt, x)


def check(qt, M: int, dtype: torch.dtype, gen: torch.Generator, x: torch.Tensor | None = None,
          bias: bool = False, swap_ab: bool = False) -> float:
    """Generate, run on a NaN-prefilled `out`, return ||y - ref|| / ||ref||."""
    N, K = qt.shape
    _, _, gemv, gemm = small_problem(qt.spec)
    family, cfg = ("gemv", gemv) if M <= 4 else ("gemm", dataclasses.replace(gemm, swap_ab=swap_ab))
    mod = kernel_module(qt.spec, family, M, N, K, cfg)
    return check_kernel(mod, qt, M, dtype, gen, bias=bias, device=DEVICE, x=x)


def _quantized(name, opts, calib, gen):
    spec = ir.get_format(name, **opts)
    N, K, _, _ = small_problem(spec)
    return ir.quantize(spec, torch.randn(N, K, generator=gen) * 0.05, **calib)


@pytest.mark.parametrize("name,opts,calib", VARIANTS, ids=VARIANT_IDS)
def test_kernel_variants(name, opts, calib, gen):
    qt = _quantized(name, opts, calib, gen)
    for M in (1, 3, 33):
        for dtype in DTYPES:
            err = check(qt, M, dtype, gen, bias=(M == 3))
            assert err < REL_TOL[dtype], f"{qt.spec.name} {opts} M={M} {dtype}: rel err {err:.2e}"


@pytest.mark.parametrize("name,opts", [("matryoshka", dict(r=3)), ("watersic", dict(bits=3))])
def test_gemm_swap_ab(name, opts, gen):
    """The weight-only formats also run with the decoded tile as the MMA's A operand."""
    qt = _quantized(name, opts, {}, gen)
    for dtype in DTYPES:
        err = check(qt, 33, dtype, gen, bias=True, swap_ab=True)
        assert err < REL_TOL[dtype], f"{name} {opts} swap_ab {dtype}: rel err {err:.2e}"


def test_act_quant_is_not_degenerate(gen):
    """With the calibrated act_absmax the int4 prologue uses most of its range (a test with act_scale = 1 and
    x ~ 0.5 N(0, 1) would only see codes -2..2)."""
    qt = _quantized("prefixquant_w4a4", dict(online_hadamard=True, had_size=64), dict(act_absmax=2.0), gen)
    x = torch.randn(64, qt.shape[1], generator=gen) * 0.5
    codes = torch.round(block_hadamard(x, 64) / qt.tensors["act_scale"])
    assert codes.abs().max() >= 7 and (codes == 0).float().mean() < 0.3


def test_online_hadamard_reference_matches_spec(gen):
    """y = quant(H x) @ C^T ~ x @ W^T: the rotated-basis reference is close to the unquantized layer, while
    quantizing x in the original basis (ignoring the transform) is not."""
    spec = ir.get_format("prefixquant_w4a4", online_hadamard=True, had_size=64)
    N, K, _, _ = small_problem(spec)
    W = torch.randn(N, K, generator=gen) * 0.05
    qt = ir.quantize(spec, W, act_absmax=2.5)
    x = (torch.randn(8, K, generator=gen) * 0.5).to(torch.float16)
    exact = x.double() @ W.double().T
    rel = lambda y: ((y - exact).norm() / exact.norm()).item()   # noqa: E731
    assert rel(ref_forward(qt, x)) < 0.25           # int4 x int4 error on Gaussian data
    naive = quantize_activation_ref(spec, qt.tensors, x.double()) @ ir.dequantize(qt).double().T
    assert rel(naive) > 0.9                         # C is in the rotated basis


def _fp8_exact_activations(M: int, K: int, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    """x with x / act_scale exactly e4m3 (act_scale = 7 / 448 = 2**-6), and the act_absmax giving that scale."""
    codes = (torch.randn(M, K, generator=gen) * 60).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    return codes * 2.0 ** -6, 7.0


@pytest.mark.parametrize("M", [1, 3, 33])
def test_w8a8_fp8_kernel_exact_activations(M, gen):
    spec = ir.get_format("w8a8_static", weight="fp8_e4m3")
    N, K, _, _ = small_problem(spec)
    x, absmax = _fp8_exact_activations(M, K, gen)
    qt = ir.quantize(spec, torch.randn(N, K, generator=gen) * 0.05, act_absmax=absmax)
    assert qt.tensors["act_scale"].item() == 2.0 ** -6
    for dtype in DTYPES:
        assert torch.equal(x.to(dtype).float(), x)
        err = check(qt, M, dtype, gen, x=x, bias=(M == 3))
        assert err < REL_TOL[dtype], f"fp8 M={M} {dtype}: rel err {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 3, 33])
def test_w8a8_fp8_kernel_gpu(M, gen):
    """Ordinary activations: the prologue's fp32 -> e4m3 rounding (hardware RTNE) must match torch's."""
    qt = _quantized("w8a8_static", dict(weight="fp8_e4m3"), dict(act_absmax=2.0), gen)
    for dtype in DTYPES:
        err = check(qt, M, dtype, gen, bias=(M == 3))
        assert err < REL_TOL[dtype], f"fp8 M={M} {dtype}: rel err {err:.2e}"


SYNTHETIC = [("matryoshka", dict(r=3, sym=True)), ("matryoshka", dict()), ("prefixquant_w4a4", dict()),
             ("w8a8_static", dict()), ("w8a8_static", dict(weight="fp8_e4m3")), ("watersic", dict(bits=3)),
             ("watersic", dict(bits=8))]


@pytest.mark.parametrize("name,opts", SYNTHETIC, ids=[f"{n}-{o}" for n, o in SYNTHETIC])
def test_synthetic_tensors_decode_and_run(name, opts, gen):
    spec = ir.get_format(name, **opts)
    N, K, _, _ = small_problem(spec)
    qt = synthetic_quantized(spec, N, K, seed=3)
    W = ir.dequantize(qt)
    assert torch.isfinite(W).all() and W.abs().max() > 0
    if spec.family == "watersic":
        assert (qt.tensors["col_scale"] > 0).all() and (qt.tensors["row_scale"] > 0).all()
    if spec.family == "matryoshka" and spec.param("sym"):
        assert (qt.tensors["zeros"] == 128).all()
    if spec.act_quant is not None and spec.act_quant.kind == "fp8_e4m3":
        assert len(torch.unique(qt.tensors["weight"].view(torch.uint8))) > 200     # codes span the e4m3 range
        # a power-of-two act_scale keeps x / act_scale on the e4m3 grid under the interpreter (module docstring)
        x, _ = _fp8_exact_activations(1, K, gen)
        qt = QuantizedTensor(spec, qt.shape, dict(qt.tensors, act_scale=torch.tensor([2.0 ** -6])))
    elif spec.act_quant is not None:
        x = torch.randn(1, K, generator=gen) * 3 * qt.tensors["act_scale"]   # int codes spread over the range
    else:
        x = None
    err = check(qt, 1, torch.float16, gen, x=x)
    assert err < REL_TOL[torch.float16], f"{name} {opts} synthetic: rel err {err:.2e}"
