"""TVM backend, formats that quantize activations (w8a8_static int8 / fp8-e4m3, prefixquant_w4a4 with and without
its online Hadamard). The launcher (runtime/cubin.py quantize_activation, after the input transforms) turns x into
the static activation codes exactly as ir.actquant.quantize_codes does (int8 codes; e4m3 codes as uint8 bits); the
kernel multiplies them with the weight codes (its decode macro: the code as fp32, bit-exact here) and scales by
act_scale * weight_scale[n] in the epilogue. The llvm builds of the gemv, SIMT gemm and tensor-core gemm (mma
emulated per warp; fp16 operands, exact for these codes) are checked against ir.reference (float64 of the
quantized activations) on NaN-prefilled outputs, N and K not multiples of the tiles."""
import dataclasses

import pytest
import torch

import ir
from codegen import tvm_compat
from codegen.plan import lower
from ir import KernelConfig, SpecError
from ir.actquant import quantize_codes
from kernel_harness import REL_TOL, check_kernel
from runtime import cubin

pytestmark = pytest.mark.skipif(bool(tvm_compat.unavailable_reason()),
                                reason=f"TVM backend tests need TVM: {tvm_compat.unavailable_reason()}")

from codegen import tvm_backend as tb  # noqa: E402  (after the skip marker)
from test_triton_actquant import IDS, VARIANTS  # noqa: E402  (the same format variants as the Triton kernels')

N, K = 72, 288
CONFIGS = [   # (family, config, Ms): gemv split-K, the mma gemm with split-K, the SIMT gemm (block_n < 8 x warps)
    ("gemv", KernelConfig(block_m=4, block_n=16, block_k=64, split_k=2, num_warps=4), (1, 3)),
    ("gemm", KernelConfig(block_m=16, block_n=32, block_k=32, split_k=2, num_warps=2), (16, 33)),
    ("gemm", KernelConfig(block_m=16, block_n=16, block_k=32, split_k=1, num_warps=4), (16,)),
]


@pytest.fixture(scope="module", params=VARIANTS, ids=IDS)
def qt(request):
    name, opts, calib = request.param
    spec = ir.get_format(name, **opts)
    return ir.quantize(spec, torch.randn(N, K, generator=torch.Generator().manual_seed(3)) * 0.05, **calib)


def _activations(qt, M, gen):
    s = qt.tensors["act_scale"]
    if qt.spec.act_quant.kind == "fp8_e4m3":   # codes over the whole e4m3 range, plus values that clamp
        return torch.randn(M, K, generator=gen) * 120 * s
    return torch.randn(M, K, generator=gen) * 3 * s   # int codes spread over the range, some clamped


def test_decode_macro_is_the_weight_code(qt):
    plan = lower(qt.spec, 1, N, K, CONFIGS[0][1], "sm90", family="gemv")
    codes = (qt.tensors["weight"].float() if "weight" in qt.tensors
             else ir.dequantize(qt).double().div(qt.tensors["weight_scale"].double()[:, None]).round().float())
    assert torch.equal(tb.dequant_cpu(plan, qt.tensors, N, K), codes)


def test_kernels_match_reference_on_llvm(qt, gen):
    for family, cfg, Ms in CONFIGS:
        plan = lower(qt.spec, Ms[0], N, K, cfg, "sm90", family=family)
        kern = tb.CpuKernel(plan)
        for M in Ms:
            for dtype in (torch.float16, torch.bfloat16):
                x = _activations(qt, M, gen).to(dtype)
                err = check_kernel(kern, qt, M, dtype, gen, bias=M in (3, 33), x=x)
                assert err < REL_TOL[dtype], f"{tb.template_for(plan)} M={M} {dtype}: rel err {err:.2e}"


@pytest.mark.parametrize("kind", ["int8", "int4", "fp8_e4m3"])
def test_launcher_quantizes_like_the_reference(kind, gen):
    """Bit-exact against ir.actquant.quantize_codes, ties (x / s = k + 1/2) and clamping included."""
    name, opts = {"int8": ("w8a8_static", {}), "int4": ("prefixquant_w4a4", {}),
                  "fp8_e4m3": ("w8a8_static", {"weight": "fp8_e4m3"})}[kind]
    spec = ir.get_format(name, **opts)
    plan = lower(spec, 1, N, K, CONFIGS[0][1], "sm90", family="gemv")
    aq = tb._transform_meta(plan, tb.schedule(plan))["act_quant"]
    s = torch.tensor([0.0371], dtype=torch.float32)
    ties = (torch.arange(-300, 300) + 0.5) * 0.25
    x = torch.cat([torch.randn(4096, generator=gen) * 60 * s, ties * s.double().item() * 4]).reshape(4, -1)
    for dtype in (torch.float16, torch.bfloat16):
        codes = cubin.quantize_activation(aq, x.to(dtype), {"act_scale": s})
        want = quantize_codes(spec.act_quant, x.to(dtype), s[0])
        got = codes.view(torch.float8_e4m3fn).float() if kind == "fp8_e4m3" else codes.float()
        assert codes.dtype == getattr(torch, aq["codes"]) and torch.equal(got, want)


def test_manifest_records_the_activation_path():
    spec = ir.get_format("w8a8_static")
    plan = lower(spec, 16, 4096, 4096, CONFIGS[1][1], "sm90", family="gemm")
    script = tb.render_tvm(plan, "cuda")
    cuda = tvm_compat.compile_cuda(tb.module_text(script), plan.name, "sm_90a")
    meta = tb.launch_metadata(plan, cuda, {})
    assert meta["act_quant"]["codes"] == "int8" and meta["act_quant"]["row_scale"] == "weight_scale"
    assert {"act_scale", "weight_scale", "weight"} <= {p["name"] for p in meta["params"]}
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in cuda
    gptq = lower(ir.get_format("gptq"), 1, 4096, 4096, CONFIGS[0][1], "sm90", family="gemv")
    assert tb._transform_meta(gptq, tb.schedule(gptq))["act_quant"] is None


def test_codes_wider_than_int8_are_refused():
    plan = lower(ir.get_format("w8a8_static"), 1, N, K, CONFIGS[0][1], "sm90", family="gemv")
    plan = dataclasses.replace(plan, act_quant=dict(plan.act_quant, qmin=0, qmax=255))   # unsigned 8-bit codes
    with pytest.raises(SpecError, match=r"int8 or as e4m3 bits.*\[0, 255\]"):
        tb.check_supported(plan)
