"""bnb_nf4 / bnb_fp4 Triton kernels beyond the default-option harness: double quant on/off, other blocksizes,
tiles equal to / inside / spanning an absmax block (the gemv factorized path, the per-column absmax vector and
the per-element fallback), swap_ab, fp16 + bf16, a misaligned weight view; and the twin of the word unpacker."""
import pytest
import torch

import ir
from ir import KernelConfig
from ir.formats.bnb import unpack_nibbles_hi_first, unpack_words_hi_first
from kernel_harness import REL_TOL, check_kernel, kernel_module

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
    w = qt.tensors["weight"]
    buf = torch.empty(w.numel() + 1, dtype=torch.uint8)
    view = buf[1:].view_as(w)
    view.copy_(w)
    assert view.data_ptr() % 16
    mod = kernel_module(qt.spec, "gemv", 1, N, 192, _cfg(1, 64))
    x = (torch.randn(1, 192, generator=gen) * 0.5).half()
    ref = mod.run(x, dict(qt.tensors), N)
    got = mod.run(x, dict(qt.tensors, weight=view), N)
    assert torch.equal(ref, got)


def test_bnb_kernel_misaligned_table_view(gen):
    """The M=1 field-by-field look-up ORs the code's byte offset into the table address; a quant_map view off a
    64-byte boundary is copied first."""
    qt = _qt("bnb_nf4", 64, True, 192)
    qm = qt.tensors["quant_map"]
    buf = torch.empty(qm.numel() + 1, dtype=torch.float32)
    view = buf[1:]
    view.copy_(qm)
    assert view.data_ptr() % 64
    mod = kernel_module(qt.spec, "gemv", 1, N, 192, _cfg(1, 64))
    x = (torch.randn(1, 192, generator=gen) * 0.5).half()
    assert torch.equal(mod.run(x, dict(qt.tensors), N), mod.run(x, dict(qt.tensors, quant_map=view), N))


def test_part_field_offsets_twin():
    """part_field's table byte offset of element j of a word, (w >> ((4j ^ 4) - 2)) & 0x3C (j = 1: (w << 2) & 0x3C),
    is 4 * its code as unpack_words_hi_first gives it."""
    w = torch.randint(-2**31, 2**31, (256,), dtype=torch.int64, generator=torch.Generator().manual_seed(5))
    codes = unpack_words_hi_first(w.to(torch.int32).view(-1, 1))
    for j in range(8):
        off = (w << 2) & 0x3C if j == 1 else (w >> (((4 * j) ^ 4) - 2)) & 0x3C
        assert torch.equal(off, 4 * codes[:, j])


def test_unpack_words_twin():
    b = torch.randint(0, 256, (4, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    codes = unpack_words_hi_first(b.view(torch.int32))
    assert torch.equal(codes.reshape(-1), unpack_nibbles_hi_first(b))
