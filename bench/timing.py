"""GPU timing, one way everywhere: CUDA-graph replay of one call, timed by triton.testing.do_bench
(which flushes L2 between repetitions), median, in microseconds."""
from __future__ import annotations

from typing import Callable

import torch


def capture(fn: Callable[[], object], warmup: int = 3) -> "torch.cuda.CUDAGraph":
    """Warm `fn` up on a side stream (compiles, autotunes, allocates), then capture one call."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    return g


def time_us(fn: Callable[[], object], rep_ms: int = 100) -> float:
    """Median microseconds per call of `fn`, replayed from a CUDA graph."""
    import triton.testing
    g = capture(fn)
    return 1000.0 * triton.testing.do_bench(g.replay, warmup=25, rep=rep_ms, return_mode="median")


def time_eager_us(fn: Callable[[], object], iters: int = 50) -> float:
    """Median wall microseconds per eager call (launch overhead included), synchronizing each call."""
    import time
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return 1e6 * times[len(times) // 2]
