"""HIGGS Triton fast paths (word groups cut field by field, grid entries read through L1): tiles inside a scale
group (per-column scale vector) and spanning groups, gemm and gemv, and the M=1 factorized field-by-field path
(part_field), for every p and bits, straddling fields included; fp16 + bf16."""
import pytest
import torch

import ir
from ir import KernelConfig
from kernel_harness import REL_TOL, check_kernel, device_or_skip, kernel_module

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N = 40


def _cfg(block_m, block_k, split_k=1):
    return KernelConfig(block_m=block_m, block_n=16, block_k=block_k, split_k=split_k, num_warps=4, num_stages=1)


CASES = [  # (bits, group_size, hadamard_size, K, M, config)
    (4, 64, 128, 256, 1, _cfg(1, 64, split_k=2)),    # gemv, tile == group (factorized)
    (2, 128, 128, 256, 3, _cfg(4, 32, split_k=3)),   # gemv, 4 tiles per group
    (2, 64, 128, 256, 1, _cfg(1, 128)),              # gemv, tile spans 2 groups (per-element scales)
    (4, 64, 128, 256, 16, _cfg(16, 128)),            # gemm, tile spans 2 groups
    (2, 128, 128, 256, 33, _cfg(16, 64, split_k=2)),  # gemm, per-column scale vector
]


@pytest.mark.parametrize("bits,gs,hs,K,M,cfg", CASES)
def test_higgs_p1_kernel_options(bits, gs, hs, K, M, cfg, gen):
    spec = ir.get_format("higgs", p=1, bits=bits, group_size=gs, hadamard_size=hs)
    qt = ir.quantize(spec, torch.randn(N, K, generator=torch.Generator().manual_seed(5)) * 0.05)
    family = "gemv" if M <= 4 else "gemm"
    mod = kernel_module(spec, family, M, N, K, cfg)
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, M, dtype, gen, bias=(M == 3), device=DEVICE)
        assert err < REL_TOL[dtype], f"higgs p1 b{bits} g{gs} {family} M={M} {dtype}: rel err {err:.2e}"


M1_CASES = [  # (p, bits, group_size, hadamard_size, K, config): the M=1 field-by-field path (parts_k_per)
    (1, 2, 64, 128, 256, _cfg(1, 64, split_k=2)),
    (1, 3, 128, 128, 384, _cfg(1, 128, split_k=2)),   # 3-word groups of 32 codes, last tile past K
    (1, 3, 64, 64, 192, _cfg(1, 32)),
    (1, 4, 64, 128, 256, _cfg(1, 64, split_k=3)),
    (2, 2, 64, 128, 256, _cfg(1, 64)),
    (2, 3, 64, 64, 192, _cfg(1, 64, split_k=2)),      # 6-bit pair codes straddle words
    (2, 4, 128, 128, 256, _cfg(1, 128, split_k=2)),
]


TILE_CASES = [  # (p, bits, group_size, hadamard_size, K, M, config): decode_tile_fast (fields joined into the tile)
    (1, 3, 64, 128, 256, 16, _cfg(16, 64, split_k=2)),   # 3-bit straddling fields, gemm
    (2, 3, 64, 64, 192, 3, _cfg(4, 64)),                 # 6-bit pair codes, gemv block_m > 1
    (2, 4, 64, 128, 256, 16, _cfg(16, 128)),             # 8-bit pair codes, tile spans 2 groups
    (2, 2, 128, 128, 256, 33, _cfg(16, 64, split_k=2)),
]


@pytest.mark.parametrize("p,bits,gs,hs,K,M,cfg", TILE_CASES)
def test_higgs_tile_fields(p, bits, gs, hs, K, M, cfg, gen):
    spec = ir.get_format("higgs", p=p, bits=bits, group_size=gs, hadamard_size=hs)
    qt = ir.quantize(spec, torch.randn(N, K, generator=torch.Generator().manual_seed(5)) * 0.05)
    family = "gemv" if M <= 4 else "gemm"
    mod = kernel_module(spec, family, M, N, K, cfg)
    assert hasattr(mod, "decode_tile_fast")
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, M, dtype, gen, bias=(M == 3), device=DEVICE)
        assert err < REL_TOL[dtype], f"higgs p{p} b{bits} g{gs} {family} M={M} {dtype}: rel err {err:.2e}"


@pytest.mark.parametrize("p,bits,gs,hs,K,cfg", M1_CASES)
def test_higgs_m1_fields(p, bits, gs, hs, K, cfg, gen):
    spec = ir.get_format("higgs", p=p, bits=bits, group_size=gs, hadamard_size=hs)
    qt = ir.quantize(spec, torch.randn(N, K, generator=torch.Generator().manual_seed(5)) * 0.05)
    mod = kernel_module(spec, "gemv", 1, N, K, cfg)
    assert hasattr(mod, "part_field")  # the field-by-field path was taken
    for dtype in (torch.float16, torch.bfloat16):
        err = check_kernel(mod, qt, 1, dtype, gen, bias=False, device=DEVICE)
        assert err < REL_TOL[dtype], f"higgs p{p} b{bits} g{gs} M=1 {dtype}: rel err {err:.2e}"


def test_higgs_m1_misaligned_grid(gen):
    """part_field ORs the entry's byte offset into the grid's address; a grid view off its size's alignment is
    copied to an aligned buffer first."""
    spec = ir.get_format("higgs", p=2, bits=4, group_size=64, hadamard_size=128)
    qt = ir.quantize(spec, torch.randn(N, 256, generator=torch.Generator().manual_seed(5)) * 0.05)
    dev = device_or_skip()
    tensors = {k: v.to(dev) for k, v in qt.tensors.items()}
    g = tensors["grid"]
    buf = torch.empty(g.numel() + 1, dtype=g.dtype, device=dev)
    view = buf[1:].view(g.shape)
    view.copy_(g)
    assert view.data_ptr() % 1024
    mod = kernel_module(spec, "gemv", 1, N, 256, _cfg(1, 64))
    x = (torch.randn(1, 256, generator=gen) * 0.5).half().to(dev)
    assert torch.equal(mod.run(x, dict(tensors), N), mod.run(x, dict(tensors, grid=view), N))



@pytest.mark.parametrize("size", [4, 1024, 2048])
def test_hadamard_helper_one_launch_matches_the_torch_butterfly(size, monkeypatch):
    """The generated wrapper's input Hadamard runs as one _fwht_rows launch (the interpreter here, the GPU there)
    with the torch butterfly's fp32 operations in its order: equal to it where sqrt(size) is a power of two, within
    one fp16 rounding otherwise (torch divides, the kernel multiplies by the fp32 reciprocal as torch's CUDA
    division by a scalar does); and both are ir.hadamard.block_hadamard to fp16 rounding."""
    from ir.hadamard import block_hadamard
    mod = kernel_module(ir.get_format("higgs"), "gemv", 1, 256, 1024,
                        KernelConfig(block_m=1, block_n=64, block_k=128, split_k=2, num_warps=4))
    calls = []
    monkeypatch.setattr(mod, "_fwht_rows", _Spy(mod._fwht_rows, calls))
    x = torch.randn(3, 2 * size, generator=torch.Generator().manual_seed(size)).half().to(device_or_skip())
    fast = mod._hadamard(x, size, True)
    assert len(calls) == 1 and fast.dtype == x.dtype and fast.shape == x.shape
    monkeypatch.setattr(mod, "_FWHT_MAX", 0)   # the torch fallback
    slow = mod._hadamard(x, size, True)
    assert len(calls) == 1
    if size in (4, 1024):
        assert torch.equal(fast, slow)
    else:
        assert ((fast.float() - slow.float()).abs() <= 1e-3 * slow.float().abs().clamp_min(1e-2)).all()
    torch.testing.assert_close(fast.float().cpu(), block_hadamard(x.float().cpu(), size), rtol=2e-3, atol=2e-3)
    assert torch.equal(mod._hadamard(x, size, False), mod._hadamard(x.clone(), size, False))
    with pytest.raises(ValueError, match=f"Hadamard block {2 * size} does not divide"):
        mod._hadamard(x[:, : 3 * size // 2] if size > 4 else x[:, :6], 2 * size, True)


class _Spy:
    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        self.calls.append(grid)
        return self.fn[grid]
