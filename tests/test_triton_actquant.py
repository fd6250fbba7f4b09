"""Fast decode paths of the activation-quantized families (w8a8_static int8 / fp8, prefixquant_w4a4).

decode_tile_fast returns, in the gemm family, the weight codes in the MMA operand dtype (int8 / float8e4nv),
so the tile is a plain load (w8a8) or two LOP3 per 8 codes (prefixquant: 16 * the codes) with no convert per
weight; in the gemv family it returns exact fp32 values by the exponent trick. Checked here: the pure-torch twins
of those helpers bit for bit, and the generated kernels against ir.reference at tile shapes that exercise the K
and N tails (several K tiles, split-K, N not a multiple of the tile), M from 1 to 128, fp16 and bf16, NaN-prefilled
outputs.
fp8 under the interpreter: see tests/test_triton_scalar_seeds.py (activations whose x / act_scale are e4m3)."""
import pytest
import torch

import ir
from codegen.plan import lower
from codegen.triton_backend import render_triton
from ir import KernelConfig
from ir.formats.prefixquant import codes16_bytes, fields_as_float, sign_extend, signed_fields
from ir.formats.w8a8 import int8_to_float_bits
from kernel_harness import REL_TOL, check_kernel, kernel_module

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N, K = 72, 288          # K: 9 tiles of 32, 2.25 of 128; N: not a multiple of 16/32/64

# (format options, calibration); prefixquant's online Hadamard needs K % had_size == 0 (32 divides 288)
VARIANTS = [
    ("prefixquant_w4a4", dict(), dict(act_absmax=2.0)),
    ("prefixquant_w4a4", dict(online_hadamard=True, had_size=32), dict(act_absmax=2.0)),
    ("w8a8_static", dict(), dict(act_absmax=2.0)),
    ("w8a8_static", dict(weight="fp8_e4m3"), dict(act_absmax=7.0)),   # act_scale = 7/448 = 2**-6
]
IDS = [f"{n}-" + "-".join(f"{k}{v}" for k, v in o.items()) for n, o, _ in VARIANTS]

CONFIGS = {   # M -> (family, config)
    1: ("gemv", KernelConfig(block_m=1, block_n=32, block_k=64, split_k=3, num_warps=4, num_stages=1)),
    3: ("gemv", KernelConfig(block_m=4, block_n=16, block_k=128, split_k=1, num_warps=4, num_stages=1)),
    16: ("gemm", KernelConfig(block_m=16, block_n=32, block_k=32, split_k=2, num_warps=4, num_stages=2)),
    33: ("gemm", KernelConfig(block_m=32, block_n=64, block_k=64, split_k=1, num_warps=4, num_stages=2)),
    128: ("gemm", KernelConfig(block_m=64, block_n=64, block_k=128, split_k=2, num_warps=4, num_stages=2)),
}


def test_signed_fields_twins_match_sign_extend(gen):
    words = torch.randint(-2 ** 31, 2 ** 31, (4096,), generator=gen, dtype=torch.int64).to(torch.int32)
    for slot in range(8):
        ref = sign_extend((words.to(torch.int64) >> (4 * slot)) & 15, 4)
        assert torch.equal(signed_fields(words, slot, 4).to(torch.int64), ref)
        assert torch.equal(fields_as_float(words, slot, 4), ref.to(torch.float32))


def test_codes16_bytes_twin_is_16_times_the_codes(gen):
    """The gemm operand of prefixquant: two LOP3 per word give 16 * the codes as int8 bytes, in K order after the
    even / odd interleave (the torch twin of _k_major_codes16's inline asm; its GPU run is checked by the kernels
    below). Every nibble value in every slot, and random words."""
    words = torch.cat([torch.randint(-2 ** 31, 2 ** 31, (4096,), generator=gen, dtype=torch.int64).to(torch.int32),
                       (torch.arange(16, dtype=torch.int64) * 0x11111111).to(torch.int32)])
    ref = torch.stack([sign_extend((words.to(torch.int64) >> (4 * j)) & 15, 4) for j in range(8)], dim=-1) * 16
    assert torch.equal(codes16_bytes(words).to(torch.int64), ref)


def test_gemm_folds_the_code_unit_into_the_activation_scale():
    """The int32 accumulator of prefixquant's gemm counts 16 * codes: the kernel scales it back by 2**-4 (exact) in
    the activation scale, in the gemm family only (the gemv family decodes plain codes)."""
    spec = ir.get_format("prefixquant_w4a4")
    gemm = render_triton(lower(spec, 128, N, K, CONFIGS[128][1], "sm90", family="gemm"))
    gemv = render_triton(lower(spec, 1, N, K, CONFIGS[1][1], "sm90", family="gemv"))
    call = "return tl.trans(_k_major_codes16("
    assert "act_scale = tl.load(act_scale_ptr) * 0.0625\n" in gemm and call in gemm
    assert "act_scale = tl.load(act_scale_ptr)\n" in gemv and call not in gemv


def test_int8_to_float_bits_is_exact():
    q = torch.arange(-128, 128, dtype=torch.int32).to(torch.int8)
    assert torch.equal(int8_to_float_bits(q), q.to(torch.float32))


def _activations(spec, qt, M, gen):
    if spec.act_quant.kind == "fp8_e4m3":   # x / act_scale exactly e4m3: the interpreter's fp8 cast is exact there
        assert qt.tensors["act_scale"].item() == 2.0 ** -6
        return (torch.randn(M, K, generator=gen) * 60).clamp(-448, 448).to(torch.float8_e4m3fn).float() * 2.0 ** -6
    return torch.randn(M, K, generator=gen) * 3 * qt.tensors["act_scale"]     # int codes spread over the range


@pytest.mark.parametrize("name,opts,calib", VARIANTS, ids=IDS)
def test_fast_path_kernels_match_reference(name, opts, calib, gen):
    spec = ir.get_format(name, **opts)
    qt = ir.quantize(spec, torch.randn(N, K, generator=gen) * 0.05, **calib)
    for M, (family, cfg) in CONFIGS.items():
        mod = kernel_module(spec, family, M, N, K, cfg)
        for dtype in (torch.float16, torch.bfloat16):
            x = _activations(spec, qt, M, gen).to(dtype)
            err = check_kernel(mod, qt, M, dtype, gen, bias=(M == 3), device=DEVICE, x=x)
            assert err < REL_TOL[dtype], f"{name} {opts} {family} M={M} {dtype}: rel err {err:.2e}"


@pytest.mark.parametrize("name,opts", [(n, o) for n, o, _ in VARIANTS], ids=IDS)
def test_fast_tile_dtype_per_family(name, opts):
    """gemm: the codes in the MMA operand dtype (no fp32 round trip); gemv: fp32 without an int->float convert."""
    spec = ir.get_format(name, **opts)
    gemm = render_triton(lower(spec, 128, N, K, CONFIGS[128][1], "sm90", family="gemm"))
    gemv = render_triton(lower(spec, 1, N, K, CONFIGS[1][1], "sm90", family="gemv"))
    fast_gemm = gemm.split("def decode_tile_fast(")[1].split("\n\n\n")[0]
    assert ".to(tl.float32)" not in fast_gemm
    if spec.act_quant.kind == "int":
        assert "bitcast=True" in gemv.split("def decode_tile_fast(")[1]
