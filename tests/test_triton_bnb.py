"""bnb_nf4 / bnb_fp4 Triton kernels beyond the default-option harness: double quant on/off, other blocksizes,
tiles equal to / inside / spanning an absmax block (the gemv factorized path, the per-column absmax vector and
the per-element fallback), swap_ab, fp16 + bf16, a misaligned weight view; the word unpacker's twin; and the
register look-up table of the GPU path (its inline PTX run by a small emulator against lut_words_fp16)."""
import inspect
import re

import pytest
import torch

import ir
from ir import KernelConfig
from ir.formats.bnb import (FP4_TABLE, NF4_TABLE, fp16_byte_planes, lut_words_fp16, unpack_nibbles_hi_first,
                            unpack_words_hi_first)
from kernel_harness import REL_TOL, check_kernel, kernel_module, run_ptx

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N = 40  # not a multiple of block_n


def _qt(name, blocksize, double_quant, K):
    spec = ir.get_format(name, blocksize=blocksize, double_quant=double_quant)
    g = torch.Generator().manual_seed(7)
    return ir.quantize(spec, torch.randn(N, K, generator=g) * 0.05)


def _cfg(block_m, block_k, split_k=1, swap_ab=False):
    return KernelConfig(block_m=block_m, block_n=16, block_k=block_k, split_k=split_k, num_warps=4,
                        num_stages=1, swap_ab=swap_ab)


CASES = [  # (format, blocksize, double_quant, K, M, config)
    ("bnb_nf4", 64, True, 192, 1, _cfg(1, 64, split_k=2)),       # gemv, tile == absmax block (factorized)
    ("bnb_fp4", 64, False, 192, 3, _cfg(4, 32, split_k=3)),      # gemv, two tiles per block
    ("bnb_nf4", 32, False, 96, 1, _cfg(1, 64)),                  # gemv, tile spans 2 blocks (per-element absmax)
    ("bnb_fp4", 64, False, 320, 1, _cfg(1, 64, split_k=3)),      # gemv field by field, last tile past K
    ("bnb_nf4", 128, True, 384, 1, _cfg(1, 32, split_k=3)),      # gemv field by field, 4 tiles per block
    ("bnb_nf4", 64, True, 192, 16, _cfg(16, 64)),                # gemm, per-column absmax vector
    ("bnb_fp4", 128, True, 384, 33, _cfg(16, 128, split_k=2)),   # gemm, 3 row blocks, split-K
    ("bnb_nf4", 32, True, 96, 16, _cfg(16, 64)),                 # gemm, tile spans 2 blocks
    ("bnb_fp4", 64, False, 192, 33, _cfg(32, 64, swap_ab=True)),  # gemm, decoded weights as the A operand
]


@pytest.mark.parametrize("name,blocksize,dq,K,M,cfg", CASES)
def test_bnb_kernel_options(name, blocksize, dq, K, M, cfg, gen):
    qt = _qt(name, blocksize, dq, K)
    family = "gemv" if M <= 4 else "gemm"
    mod = kernel_module(qt.spec, family, M, N, K, cfg)
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, M, dtype, gen, bias=(M == 3), device=DEVICE)
        assert err < REL_TOL[dtype], f"{name} bs={blocksize} dq={dq} {family} M={M} {dtype}: rel err {err:.2e}"


def test_bnb_kernel_misaligned_weight_view(gen):
    """The kernel reads the bytes as int32 words; a weight view off a 16-byte boundary is copied first."""
    qt = _qt("bnb_nf4", 64, True, 192)
    tensors = {k: v.to(DEVICE) for k, v in qt.tensors.items()}
    w = tensors["weight"]
    buf = torch.empty(w.numel() + 1, dtype=torch.uint8, device=DEVICE)
    view = buf[1:].view_as(w)
    view.copy_(w)
    assert view.data_ptr() % 16
    mod = kernel_module(qt.spec, "gemv", 1, N, 192, _cfg(1, 64))
    x = (torch.randn(1, 192, generator=gen) * 0.5).half().to(DEVICE)
    ref = mod.run(x, tensors, N)
    got = mod.run(x, dict(tensors, weight=view), N)
    assert torch.equal(ref, got)


@pytest.mark.parametrize("name", ["bnb_nf4", "bnb_fp4"])
def test_register_lut_ptx_twin(name):
    """The generated kernel's register look-up table: its render-time planes are fp16_byte_planes of the format's
    table, and its inline PTX, executed instruction by instruction, gives lut_words_fp16 of random words (FP4's
    sign-symmetric variant gives -0.0 for code 8; torch.equal compares it equal to +0.0, as every FMA treats it)."""
    spec = ir.get_format(name)
    mod = kernel_module(spec, "gemv", 1, N, 192, _cfg(1, 64))
    lo, hi = fp16_byte_planes(spec.decode.table)
    assert [getattr(mod, f"_BNB_{h}{p}").value & 0xFFFFFFFF for h in ("LO", "HI") for p in range(4)] == [*lo, *hi]
    src = inspect.getsource(mod)
    asm = re.search(r'asm="""(.*?)"""', src, re.S).group(1)
    names = re.findall(r"c \+ (_BNB_\w+)", re.search(r"args=\[words, (.*?)\]", src, re.S).group(1))
    planes = [getattr(mod, n).value & 0xFFFFFFFF for n in names]
    words = torch.randint(-2**31, 2**31, (64,), dtype=torch.int64, generator=torch.Generator().manual_seed(5))
    words = torch.cat([words, torch.tensor([0, -1, 0x76543210, -0x01234568])])  # every code in every slot
    want = lut_words_fp16(words.to(torch.int32).view(-1, 1), spec.decode.table)
    got = torch.tensor([[run_ptx(asm, {f"${8 + i}": v for i, v in enumerate([w] + planes)})[f"${j}"] for j in range(8)]
                        for w in words.tolist()], dtype=torch.int64)
    got = got.to(torch.int32).view(torch.float32)
    assert torch.equal(got, want)


def test_lut_words_fp16_is_the_rounded_table():
    """lut_words_fp16 is the reference decode with the table rounded to fp16: within half an fp16 ulp (<= 2^-11 relative) of it."""
    for table in (NF4_TABLE, FP4_TABLE):
        words = torch.randint(-2**31, 2**31, (8, 4), dtype=torch.int64, generator=torch.Generator().manual_seed(2))
        exact = torch.tensor(table)[unpack_words_hi_first(words.to(torch.int32))]
        got = lut_words_fp16(words.to(torch.int32), table)
        assert torch.all((got - exact).abs() <= exact.abs() * 2.0**-11)


def test_unpack_words_twin():
    b = torch.randint(0, 256, (4, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    codes = unpack_words_hi_first(b.view(torch.int32))
    assert torch.equal(codes.reshape(-1), unpack_nibbles_hi_first(b))
