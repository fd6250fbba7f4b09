"""The read floor: the time of a tuned streaming-read kernel over a given number of bytes.

No M=1 GEMV can beat reading its own bytes, so kernels are quoted as a fraction of this floor,
measured in the same run the same way (CUDA-graph replay, L2 flushed, median)."""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


# Words a floor read is rounded up to: Triton specializes an integer argument divisible by 16, and only then can it
# prove a masked tail 16-byte aligned and issue vector loads. Without it an odd byte count streams with 4-byte
# loads at about 1.67 instead of 2.24 TB/s (H100, 122 MB), which made earlier floors up to 35% too slow.
WORD_MULTIPLE = 16
# The loads carry eviction_policy="evict_first" (L1 and L2 evict-first, no .cg): on the H100, 125 MB in 49.6 us
# (2.52 TB/s) against 54.1 us with .cg or no hint (2.31 TB/s), best config of each (bench/results NOTES.md,
# session 7); ANCHORS.md's probe had 50.4 us.


def floor_words(nbytes: int) -> int:
    """int32 words the floor reads for `nbytes`: rounded up to WORD_MULTIPLE (at most 60 bytes more)."""
    words = max(1, -(-nbytes // 4))
    return -(-words // WORD_MULTIPLE) * WORD_MULTIPLE


@triton.jit
def _stream_sum(src_ptr, out_ptr, n_words, full_rounds, BLOCK: tl.constexpr, UNROLL: tl.constexpr,
                EVICT: tl.constexpr = "evict_first"):
    """Sum n_words int32 words: rounds of UNROLL consecutive blocks per program (no mask; UNROLL loads in
    flight per iteration), then one masked pass over the tail. EVICT: the loads' eviction policy ("" for none)."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    lanes = tl.arange(0, BLOCK)
    for r in range(full_rounds):
        base = (r * nprog + pid) * (BLOCK * UNROLL)
        for u in tl.static_range(UNROLL):
            acc += tl.load(src_ptr + base + u * BLOCK + lanes, eviction_policy=EVICT)
    tail = full_rounds * nprog * (BLOCK * UNROLL)
    for u in tl.static_range(UNROLL):
        offs = tail + (pid * UNROLL + u) * BLOCK + lanes
        acc += tl.load(src_ptr + offs, mask=offs < n_words, other=0, eviction_policy=EVICT)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


def _launch(src: torch.Tensor, out: torch.Tensor, programs: int, block: int, warps: int, unroll: int = 1,
            evict: str = "evict_first") -> None:
    n = src.numel()
    if n % WORD_MULTIPLE:
        raise ValueError(f"read floor: {n} words is not a multiple of {WORD_MULTIPLE}; size the buffer with "
                         f"floor_words(nbytes)")
    full_rounds = n // (programs * block * unroll)
    _stream_sum[(programs,)](src, out, n, full_rounds, BLOCK=block, UNROLL=unroll, EVICT=evict, num_warps=warps)


def floor_call(src: torch.Tensor, cfg: dict, evict: str = "evict_first"):
    """A no-argument call of the floor kernel over `src` with one of floor_configs' configs (the per-program output
    is allocated here), for the timers."""
    out = torch.empty(cfg["programs"], dtype=torch.int32, device=src.device)
    return lambda: _launch(src, out, cfg["programs"], cfg["block"], cfg["num_warps"], cfg["unroll"], evict)


def floor_configs(n_words: int):
    """The swept configs: a persistent grid of 4, 8 or 16 programs per SM, block, warps and loads in flight."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for per_sm in (4, 8, 16):
        programs = sms * per_sm
        for block in (1024, 2048, 4096):
            for unroll in (1, 2, 4):
                if per_sm > 4 and programs * block * unroll > 4 * n_words:
                    continue  # small reads: fewer, larger programs only
                for warps in (4, 8):
                    yield {"programs": programs, "block": block, "num_warps": warps, "unroll": unroll}


@functools.lru_cache(maxsize=64)
def read_floor_us(nbytes: int) -> tuple[float, dict]:
    """Best median time to stream `nbytes` (as floor_words(nbytes) int32 words) over floor_configs."""
    from .timing import time_us
    n_words = floor_words(nbytes)
    src = torch.randint(-2 ** 31, 2 ** 31 - 1, (n_words,), dtype=torch.int32, device="cuda")
    best = (float("inf"), {})
    for cfg in floor_configs(n_words):
        t = time_us(floor_call(src, cfg), rep_ms=50)
        if t < best[0]:
            best = (t, cfg)
    return best


def main(argv=None) -> int:
    """python -m bench.read_floor [BYTES ...]: the floor and its config per byte count (default: ANCHORS.md's)."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m bench.read_floor")
    p.add_argument("bytes", nargs="*", type=lambda v: int(float(v)), default=[8_388_608, 33_554_432, 125_000_000])
    args = p.parse_args(argv)
    print(f"read floor on {torch.cuda.get_device_name()} (CUDA-graph replay, L2 flushed, median)")
    for nbytes in args.bytes:
        us, cfg = read_floor_us(nbytes)
        print(f"  {nbytes / 1e6:9.1f} MB  {us:8.2f} us  {nbytes / us / 1e6:5.2f} TB/s  {cfg}")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
