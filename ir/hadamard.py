"""Hadamard transforms (pure torch): the reference twins of the kernels' online transforms.

Only power-of-two sizes are supported (Sylvester construction). Formats whose origin uses other
sizes (QTIP's get_hadK with 12/20/28... factors) must say so at spec construction.
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=16)
def _sylvester(n: int) -> torch.Tensor:
    if n <= 0 or n & (n - 1):
        raise ValueError(f"Hadamard size {n} is invalid; expected a power of two")
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def hadamard_matrix(n: int, normalized: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The n x n Sylvester Hadamard matrix (symmetric), divided by sqrt(n) when normalized."""
    H = _sylvester(n)
    return (H / n ** 0.5 if normalized else H).to(dtype)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized fast Walsh-Hadamard transform over the last dim (a power of two), Sylvester order:
    x @ H_n in O(n log n) without forming H_n."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ValueError(f"Hadamard size {n} is invalid; expected a power of two")
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    return y.reshape(x.shape)


def block_hadamard(x: torch.Tensor, block: int, normalized: bool = True) -> torch.Tensor:
    """Apply H_block to consecutive blocks of the last dim of x (its size must divide by block).

    Computed in float64 and returned in x's dtype (float32 for integer inputs)."""
    d = x.shape[-1]
    if d % block:
        raise ValueError(f"block_hadamard: last dim {d} is not a multiple of the block size {block}")
    out = fwht(x.to(torch.float64).reshape(*x.shape[:-1], d // block, block))
    out = (out / block ** 0.5 if normalized else out).reshape(x.shape)
    return out.to(x.dtype if x.is_floating_point() else torch.float32)
