"""How the L2 state before a call changes its time: `do_bench` (L2 flushed by writing zeros to a 256 MB buffer,
so every call starts with L2 full of dirty lines), a clean L2 (a read-only pass over the same buffer) and a dirty
one (the same zero_() in this module's own loop), for the read floor with and without its evict-first hint and for
quantcc kernels with and without KernelConfig.evict_first. NOTES.md (Session 7) has the H100 figures: the hint's
gain is the write-back of the flush's dirty lines it avoids, not faster streaming.

python -m bench.flush_probe [--bytes 125e6] [--case FORMAT N,K LABEL ...]"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

FLUSH_BYTES = 256 * 2 ** 20
DEFAULT_CASES = (("int4_g128_asym", "8192,28672", "m1n64k128s8w2p2r128"),
                 ("int4_g128_asym", "28672,8192", "m1n128k128s2w4p2r128"),
                 ("bnb_nf4", "28672,8192", "m1n256k64s16w4p2"))


def l2_state_us(fn, dirty: bool, reps: int = 200) -> float:
    """Median microseconds of a CUDA-graph replay of `fn`, L2 prepared before each one: dirty (zero_() of 256 MB,
    what do_bench does) or clean (a read-only sum over it)."""
    from .timing import capture
    buf = torch.ones(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    sink = torch.empty((), dtype=torch.int64, device="cuda")
    g = capture(fn)
    times = []
    for _ in range(reps):
        if dirty:
            buf.zero_()
        else:
            sink.copy_(buf.sum())
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(1000.0 * start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def _row(name: str, fn) -> str:
    from .timing import time_us
    a, clean, dirty = time_us(fn), l2_state_us(fn, dirty=False), l2_state_us(fn, dirty=True)
    return f"| {name} | {a:.2f} | {clean:.2f} | {dirty:.2f} |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.flush_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--bytes", type=lambda v: int(float(v)), default=125_000_000, help="read-floor size")
    p.add_argument("--case", nargs=3, action="append", metavar=("FORMAT", "N,K", "LABEL"),
                   help="a quantcc kernel at M=1, timed as given and with evict_first (default: int4 and bnb_nf4)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.flush_probe times kernels on a CUDA GPU", file=sys.stderr)
        return 2
    import ir
    from codegen.arch import arch_of_capability
    from runtime.kernels import get_kernel

    from .probe import gpu_weights
    from .read_floor import floor_call, floor_words, read_floor_us
    print("| kernel | do_bench us | clean L2 us | dirty L2 us |\n| --- | --- | --- | --- |")
    _, cfg = read_floor_us(args.bytes)
    src = torch.randint(-2 ** 31, 2 ** 31 - 1, (floor_words(args.bytes),), dtype=torch.int32, device="cuda")
    for evict in ("evict_first", ""):
        print(_row(f"read floor {args.bytes / 1e6:.1f} MB, {evict or 'no hint'}", floor_call(src, cfg, evict)),
              flush=True)
    arch = arch_of_capability(*torch.cuda.get_device_capability())
    for fmt, shape, label in args.case or DEFAULT_CASES:
        N, K = (int(v) for v in shape.split(","))
        spec = ir.get_format(fmt)
        t, W, _ = gpu_weights(spec, N, K)
        x = torch.randn(1, K, device="cuda").half()
        y = torch.empty(1, N, device="cuda", dtype=torch.float16)
        base = ir.KernelConfig.from_label(label)
        for c in (base, dataclasses.replace(base, evict_first=not base.evict_first)):
            mod = get_kernel(spec, 1, N, K, arch, c)
            print(_row(f"{fmt} {N}x{K} {c.label}", lambda: mod.run(x, t, N, out=y)), flush=True)
        print(_row(f"fp16 cuBLAS {N}x{K}", lambda: torch.nn.functional.linear(x, W)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
