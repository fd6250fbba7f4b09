"""HIGGS p=1 Triton fast paths (bits 2 and 4: word loads cut by shifts, grid looked up with tl.gather): tiles
inside a scale group (the gemv factorized path and the per-column scale vector) and spanning groups, fp16 + bf16."""
import pytest
import torch

import ir
from ir import KernelConfig
from kernel_harness import REL_TOL, check_kernel, kernel_module

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
