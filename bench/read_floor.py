"""The read floor: the time of a tuned streaming-read kernel over a given number of bytes.

No M=1 GEMV can beat reading its own bytes, so kernels are quoted as a fraction of this floor,
measured in the same run the same way (CUDA-graph replay, L2 flushed, median)."""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _stream_sum(src_ptr, out_ptr, n_words, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for i in range(ITERS):
        offs = (i * nprog + pid) * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(src_ptr + offs, mask=offs < n_words, other=0, cache_modifier=".cg")
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


def _launch(src: torch.Tensor, out: torch.Tensor, programs: int, block: int, warps: int) -> None:
    n = src.numel()
    iters = triton.cdiv(n, programs * block)
    _stream_sum[(programs,)](src, out, n, ITERS=iters, BLOCK=block, num_warps=warps)


@functools.lru_cache(maxsize=64)
def read_floor_us(nbytes: int) -> tuple[float, dict]:
    """Best median time to stream `nbytes` (int32 words) over a small sweep of grid/block/warps."""
    from .timing import time_us
    props = torch.cuda.get_device_properties(0)
    n_words = max(1, nbytes // 4)
    src = torch.randint(-2 ** 31, 2 ** 31 - 1, (n_words,), dtype=torch.int32, device="cuda")
    best = (float("inf"), {})
    for per_sm in (4, 8, 16):
        programs = props.multi_processor_count * per_sm
        out = torch.empty(programs, dtype=torch.int32, device="cuda")
        for block in (1024, 2048, 4096):
            for warps in (4, 8):
                if programs * block > 4 * n_words and per_sm > 4:
                    continue
                t = time_us(lambda: _launch(src, out, programs, block, warps), rep_ms=50)
                if t < best[0]:
                    best = (t, {"programs": programs, "block": block, "num_warps": warps})
    return best
