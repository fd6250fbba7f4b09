"""GGUF K-quant fast decode (templates/triton/decode/gguf.jinja, decode_tile_fast): the 2**23 exponent trick
against its torch twin, and the generated kernels against the reference at tile shapes the common harness
does not reach (several super-blocks per tile, half and quarter super-blocks, split-K, bf16, synthetic bytes)."""
import pytest
import torch

import ir
from codegen.plan import lower
from codegen.triton_backend import render_triton
from ir.formats import gguf as G
from kernel_harness import REL_TOL, check_kernel, kernel_module

KQUANTS = ("gguf_q4_k", "gguf_q2_k")


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_magic_field_is_exact(bits, gen):
    words = torch.randint(-2**31, 2**31 - 1, (4096,), generator=gen, dtype=torch.int64).to(torch.int32)
    for half, src in ((words, G.with_magic(words)), (words >> 16, G.with_magic(words >> 16))):
        for shift in range(0, 17 - bits):
            want = (((half.to(torch.int64) >> shift) & ((1 << bits) - 1)) << shift).to(torch.float32)
            assert torch.equal(G.magic_field(src, shift, bits), want), (bits, shift)


def _cfg(family, block_k, split_k=1, block_n=16):
    return ir.KernelConfig(block_m=1 if family == "gemv" else 16, block_n=block_n, block_k=block_k,
                           split_k=split_k, num_warps=4, num_stages=1)


@pytest.mark.parametrize("name", KQUANTS)
def test_fast_path_is_rendered_for_whole_chunks_only(name):
    spec = ir.get_format(name)
    chunk = 32 * 8 // spec.decode.bits  # weights per 32-byte qs chunk
    for block_k, fast in ((chunk, True), (2 * chunk, True), (512, True), (chunk // 2, False)):
        src = render_triton(lower(spec, 1, 64, 1024, _cfg("gemv", block_k), "sm90", family="gemv"))
        assert ("def decode_tile_fast(" in src) == fast, (name, block_k)


@pytest.mark.parametrize("name", KQUANTS)
@pytest.mark.parametrize("family,M,block_k,split_k", [("gemv", 1, 64, 3), ("gemv", 2, 128, 2), ("gemv", 1, 512, 1),
                                                      ("gemm", 16, 128, 1), ("gemm", 20, 256, 2)])
def test_fast_path_matches_reference(name, family, M, block_k, split_k, gen):
    spec = ir.get_format(name)
    if block_k % (32 * 8 // spec.decode.bits):
        pytest.skip("tile splits a qs chunk: generic decode (covered by test_triton_kernels)")
    N, K = 24, 1280  # 5 super-blocks: tiles past K and a partial last tile
    qt = ir.QuantizedTensor(spec, (N, K), G.GGUFCodec().synthetic(spec, N, K, gen))
    mod = kernel_module(spec, family, M, N, K, _cfg(family, block_k, split_k))
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, M, dtype, gen, bias=True)
        assert err < REL_TOL[dtype], f"{name} {family} k{block_k} s{split_k} {dtype}: rel err {err:.2e}"


@pytest.mark.parametrize("name", ("gguf_q4_0", "gguf_q8_0"))
@pytest.mark.parametrize("family,M,block_k,split_k", [("gemv", 1, 64, 3), ("gemv", 3, 256, 1), ("gemm", 16, 128, 2)])
def test_32_block_fast_path_matches_reference(name, family, M, block_k, split_k, gen):
    """Q4_0 / Q8_0 codes through the exponent trick (Q8_0: every int8 code incl. -128 and 127 on random bytes)."""
    spec = ir.get_format(name)
    N, K = 24, 1120  # 35 blocks
    qt = ir.QuantizedTensor(spec, (N, K), G.GGUFCodec().synthetic(spec, N, K, gen))
    mod = kernel_module(spec, family, M, N, K, _cfg(family, block_k, split_k))
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, M, dtype, gen, bias=True)
        assert err < REL_TOL[dtype], f"{name} {family} k{block_k} s{split_k} {dtype}: rel err {err:.2e}"


@pytest.mark.parametrize("name", ("gguf_q4_0", "gguf_q4_k"))
def test_unaligned_blocks_view_is_copied_for_the_word_loads(name, gen):
    """A contiguous `blocks` view at an odd byte offset (e.g. into a mapped file) still decodes right: the entry
    point copies it before the kernel reads halves / int32 words."""
    spec = ir.get_format(name)
    N, K = 8, 512
    qt = ir.QuantizedTensor(spec, (N, K), G.GGUFCodec().synthetic(spec, N, K, gen))
    raw = qt.tensors["blocks"]
    buf = torch.empty(raw.numel() + 1, dtype=torch.uint8)
    view = buf[1:].view(raw.shape)
    view.copy_(raw)
    assert view.data_ptr() % 2 == 1
    mod = kernel_module(spec, "gemv", 1, N, K, _cfg("gemv", 128))
    shifted = ir.QuantizedTensor(spec, (N, K), {"blocks": view})
    assert check_kernel(mod, shifted, 1, torch.float16, gen) < REL_TOL[torch.float16]
