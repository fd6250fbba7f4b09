"""The 3-bit GPTQ fast path (fields straddling int32 words): decode_tile_fast / decode_parts_fast of gptq.jinja.

Per column, 32 codes fill 3 int32 words LSB-first along K (fields 10 and 21 cross a word boundary), zero points
the same along N. The fast path loads each word once and extracts the fields with constant shifts; codes become
floats by the exponent trick. Checked here: the code extraction bit-exactly against ir.bitpack.unpack_rows on
random words (every field value, both straddling fields), the decoded tile bit-exactly through the gemm kernel
(one-hot activations pick single weights), and whole kernels at non-default options against the reference
(CPU: TRITON_INTERPRET=1, set by conftest)."""
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

import ir
from ir.bitpack import unpack_rows
from kernel_harness import REL_TOL, check_kernel, kernel_module

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _quantized(fmt, N, K, **options):
    spec = ir.get_format(fmt, **options) if options else ir.get_format(fmt)
    W = torch.randn(N, K, generator=torch.Generator().manual_seed(7)) * 0.05
    return ir.quantize(spec, W)


@triton.jit
def _codes_kernel(codes3, qweight_ptr, out_ptr, N, K, AS_FLOAT: tl.constexpr,
                  BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    k0 = tl.program_id(0) * BLOCK_K
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    q = codes3(qweight_ptr, k0, offs_n, mask_n, N, K, BLOCK_K, BLOCK_N, AS_FLOAT).to(tl.float32)
    kk = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + kk[:, None] * N + offs_n[None, :], q, mask=(kk[:, None] < K) & mask_n[None, :])


@pytest.mark.parametrize("as_float", [False, True])
def test_codes3_matches_unpack_rows(as_float):
    """Random words hold every 3-bit value in every slot, the straddling fields 10 and 21 included; tiles of
    64 along K over K = 96 also cover a tail tile half past K."""
    N, K, bk, bn = 40, 96, 64, 16
    spec = ir.get_format("int3_g128_asym")
    cfg = ir.KernelConfig(block_m=1, block_n=bn, block_k=bk, split_k=1, num_warps=4, num_stages=1)
    mod = kernel_module(spec, "gemv", 1, 64, 128, cfg)  # a legal problem; only its _codes3 is used
    qweight = torch.randint(-2**31, 2**31 - 1, (K * 3 // 32, N), dtype=torch.int32,
                            generator=torch.Generator().manual_seed(3))
    out = torch.full((K, N), float("nan"))
    grid = (triton.cdiv(K, bk), triton.cdiv(N, bn))
    _codes_kernel[grid](mod._codes3, qweight.to(DEVICE), out.to(DEVICE) if DEVICE == "cuda" else out, N, K,
                        AS_FLOAT=as_float, BLOCK_K=bk, BLOCK_N=bn)
    assert torch.equal(out.cpu(), unpack_rows(qweight, 3, K, straddle=True).float())


@pytest.mark.parametrize("fmt, options", [
    ("int3_g128_asym", {}),
    ("gptq", dict(bits=3)),                             # checkpoint v1: zero points stored minus one
    ("gptq", dict(bits=3, desc_act=True)),              # g_idx: per-row groups
])
def test_decoded_tile_is_exact(fmt, options):
    """gemm with x = the identity: y[k, n] = W[n, k], so the decoded tile must equal the fp16 reference exactly."""
    N, K = 96, 256
    qt = _quantized(fmt, N, K, **options)
    cfg = ir.KernelConfig(block_m=16, block_n=32, block_k=64, split_k=1, num_warps=4, num_stages=1)
    mod = kernel_module(qt.spec, "gemm", K, N, K, cfg)
    assert "_codes3(qweight_ptr" in Path(mod.__file__).read_text()
    x = torch.eye(K, dtype=torch.float16, device=DEVICE)
    y = mod.run(x, {k: v.to(DEVICE) for k, v in qt.tensors.items()}, N)
    assert torch.equal(y.cpu().float(), ir.dequantize(qt).t().half().float())


CASES = [
    ("gptq", dict(bits=3)),                             # v1 zero offset
    ("gptq", dict(bits=3, group_size=32)),              # tiles span several groups: per-row scales and zeros
    ("gptq", dict(bits=3, group_size=-1)),              # one group along K
    ("gptq", dict(bits=3, desc_act=True)),              # act-order g_idx
    ("autoround", dict(bits=3)),                        # sym, v1
]
CONFIGS = {
    "gemv_parts": ("gemv", 1, ir.KernelConfig(block_m=1, block_n=32, block_k=32, split_k=2, num_warps=4, num_stages=1)),
    "gemv_tile": ("gemv", 3, ir.KernelConfig(block_m=4, block_n=16, block_k=128, split_k=1, num_warps=4, num_stages=1)),
    "gemm": ("gemm", 16, ir.KernelConfig(block_m=16, block_n=32, block_k=64, split_k=2, num_warps=4, num_stages=1)),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("fmt, options", CASES)
def test_kernel_options(fmt, options, config, gen):
    N, K = 96, 384
    qt = _quantized(fmt, N, K, **options)
    family, M, cfg = CONFIGS[config]
    mod = kernel_module(qt.spec, family, M, N, K, cfg)
    assert hasattr(mod, "decode_tile_fast")
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, M, dtype, gen, bias=True, device=DEVICE)
        assert err < REL_TOL[dtype], f"{fmt} {options} {config} {dtype}: rel err {err:.2e}"


def test_parts_path_only_inside_one_group():
    """The factorized gemv form needs one scale group per tile and no g_idx."""
    def parts(options, block_k):
        spec = ir.get_format("gptq", bits=3, **options)
        cfg = ir.KernelConfig(block_m=1, block_n=32, block_k=block_k, split_k=1, num_warps=4, num_stages=1)
        return hasattr(kernel_module(spec, "gemv", 1, 96, 384, cfg), "decode_parts_fast")
    assert parts({}, 128) and parts(dict(group_size=-1), 128)
    assert not parts(dict(group_size=32), 64) and not parts(dict(desc_act=True), 32)
