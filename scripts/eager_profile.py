"""Where the eager (non-graph) time of one quantized linear goes, on a GPU machine.

    PYTHONPATH=. python scripts/eager_profile.py [FORMAT] [--shape N,K] [--batch M] [--calls C]

Times C back-to-back calls (one synchronize at the end, so it is the host-side cost per call when the host is
the bottleneck) of: fp16 F.linear, the generated kernel's entry point `run` directly, and QuantLinear.forward
(custom op + dispatch + entry point); then prints a cProfile of QuantLinear.forward, sorted by own time."""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import ir
from ir.synthetic import synthetic_quantized
from runtime.linear import QuantLinear


def per_call_us(fn, calls: int) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - t) / calls


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("format", nargs="?", default="int4_g128_asym")
    p.add_argument("--shape", default="4096,4096")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--calls", type=int, default=300)
    a = p.parse_args()
    N, K = (int(v) for v in a.shape.split(","))
    spec = ir.get_format(a.format)
    lin = QuantLinear.from_quantized(synthetic_quantized(spec, N, K)).cuda()
    x = torch.randn(a.batch, K, device="cuda", dtype=torch.float16)
    w = torch.randn(N, K, device="cuda", dtype=torch.float16)
    lin.warmup([a.batch])
    d = lin.dispatch(a.batch)
    print(f"{a.format} N={N} K={K} M={a.batch}: {d.kind} {d.kernel} ({d.source})")
    td = lin.tensors
    rows = [("fp16 F.linear", lambda: torch.nn.functional.linear(x, w)),
            ("entry point run()", lambda: d.run(x, td, N)),
            ("QuantLinear.forward", lambda: lin(x))]
    with torch.no_grad():
        for name, fn in rows:
            print(f"  {name:<22} {per_call_us(fn, a.calls):8.1f} us/call")
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(a.calls):
            lin(x)
        torch.cuda.synchronize()
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
