"""What bounds a kernel: bytes against bandwidth, SASS instructions against issue rate, and occupancy.

For each (format, N x K) at M (--batch, default 1) it takes the tuned config from this GPU's database, compiles that exact kernel
offline (`codegen.sass`, the ptxas triton ships) and sets three figures beside the measured time:

  memory   the read floor for the bytes the kernel must read: piecewise linear through --floor points (default
           ANCHORS.md's H100 floor: 8.4 MB in 8.9 us, 33.6 MB in 18.3 us, 125 MB in 50.4 us; beyond them the end
           segments' slopes), so small reads carry the fixed cost of a launch and its ramp
  issue    N*K weights x K-loop instructions per weight (MMAs included at M > 4) / 32 lanes / (SMs x 4 schedulers x --clock-ghz); at the
           boost clock this is a lower bound (the loop only: prologue, split-K epilogue and stalls excluded)
  flight   peak bytes one SM can have requested at once: resident warps x 32 x the stored bytes a thread loads per K
           tile x the tiles requested ahead (gemv: 2 with the register prefetch, else 1; gemm: num_stages - 1); Little's law wants bandwidth per SM x latency
           (--latency-ns) of it to stream at the floor

The verdict names the larger of memory and issue and how close the measured time is to it. A kernel far from
both, with fewer bytes in flight than Little's law asks for, is latency-bound (memory-level parallelism).
Measured times come from the bench results file (same-run medians) and otherwise from the database entry; the
table shows the sweep's own time beside it (a large difference means the two measured different things).

python -m bench.bounds --formats gptq bnb_nf4 eqat_w2g128 --shapes 8192,28672 28672,8192 [--md OUT]"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ir
from codegen.__main__ import _shape
from codegen.arch import kernel_family
from codegen.plan import lower
from codegen.sass import compile_report
from codegen.triton_backend import render_triton
from ir import KernelConfig, SpecError
from autotune.db import db_path as default_db_path
from runtime.tuning import entry_key, gpu_slug, m_bucket

RESULTS = Path(__file__).resolve().parent / "results"
ANCHOR_FLOOR = "8.4e6:8.9,33.6e6:18.3,125e6:50.4"  # bytes:us, ANCHORS.md (H100, CUDA-graph replay, L2 flushed)


def parse_floor(text: str) -> list[tuple[float, float]]:
    """'bytes:us,...' -> sorted points (at least two)."""
    try:
        pts = sorted((float(b), float(u)) for b, u in (p.split(":") for p in text.split(",")))
    except ValueError:
        raise SystemExit(f"bench.bounds: --floor {text!r} is not 'bytes:us,bytes:us,...'") from None
    if len(pts) < 2:
        raise SystemExit(f"bench.bounds: --floor needs two or more points, got {text!r}")
    return pts


def floor_us(nbytes: float, pts: list[tuple[float, float]]) -> float:
    """Read floor at `nbytes`: linear between the points, the end segments' slopes beyond them."""
    i = 1
    while i < len(pts) - 1 and nbytes > pts[i][0]:
        i += 1
    (b0, u0), (b1, u1) = pts[i - 1], pts[i]
    return u0 + (nbytes - b0) * (u1 - u0) / (b1 - b0)
PREFETCH_MARK = "# register prefetch"


def _measured(results: dict, name: str, N: int, K: int, M: int) -> tuple[float, int, float | None] | None:
    """(us, bytes, same-run floor us) of the bench case; the floor only when the current floor kernel measured it
    (bench.report.floor_mark: older floors were too slow)."""
    from .report import floor_mark
    for c in results.get("cases", []):
        if c["name"] == name and c["N"] == N and c["K"] == K and c["M"] == M and c.get("us") and c["status"] == "ok":
            floor = c.get("floor_us") if not floor_mark(c) else None
            return float(c["us"]), int(c["bytes"]), float(floor) if floor else None
    return None


def bound_row(spec, N: int, K: int, entry: dict, measured: tuple[float, int] | None, args) -> dict:
    M = args.batch
    cfg = KernelConfig(**entry["config"])
    rep = compile_report(spec, M, N, K, args.arch, cfg)
    loop = rep.main_loop
    ipw = sum(loop.values()) / rep.weights_per_thread if loop and rep.weights_per_thread else float("nan")
    prefetch = PREFETCH_MARK in render_triton(lower(spec, M, N, K, cfg, args.arch))
    us, nbytes, run_floor = measured if measured else (float(entry["us"]), None, None)
    if nbytes is None:  # stored bytes at the format's bits per weight + fp16 x and y
        nbytes = int(N * K * spec.bits_per_weight(N, K) / 8) + 2 * M * (N + K)
    bpw_bytes = nbytes / (N * K)
    mem_us = run_floor or floor_us(nbytes, args.floor_points)
    issue_us = N * K * ipw / 32 / (args.sms * 4 * args.clock_ghz * 1e3)
    # tiles one program has requested ahead: the gemv's register prefetch carries one more, the gemm's cp.async
    # pipeline num_stages - 1
    ahead = max(1, cfg.num_stages - 1) if kernel_family(M) == "gemm" else (2 if prefetch else 1)
    flight = rep.occupancy_warps * 32 * rep.weights_per_thread * bpw_bytes * ahead
    pts = args.floor_points
    rate = (pts[-1][0] - pts[-2][0]) / (pts[-1][1] - pts[-2][1]) * 1e6  # bytes/s of the largest reads
    need = rate / args.sms * args.latency_ns * 1e-9
    bound, t = ("memory", mem_us) if mem_us >= issue_us else ("issue", issue_us)
    return {"format": spec.name, "N": N, "K": K, "M": M, "config": cfg.label, "us": us,
            "us_source": "bench" if measured else "database", "db_us": float(entry["us"]), "bytes": nbytes, "memory_us": mem_us,
            "memory_source": "run" if run_floor else "points",
            "issue_us": issue_us, "instr_per_weight": ipw, "registers": rep.registers, "spills": rep.spills,
            "warps_per_sm": rep.occupancy_warps, "prefetch": prefetch, "flight_kb": flight / 1024,
            "need_kb": need / 1024, "bound": bound, "of_bound": t / us}


def _verdict(r: dict) -> str:
    """Which bound the measured time sits at, or why it sits at none."""
    m, i = r["memory_us"] / r["us"], r["issue_us"] / r["us"]
    if max(m, i) >= 0.85:
        return f"{r['bound']}-bound ({max(m, i):.0%} of the time)"
    if m + i >= 0.9:
        return (f"memory {m:.0%} + issue {i:.0%} of the time: the loads and the decode do not overlap "
                f"fully; fewer instructions per weight move it")
    if r["flight_kb"] < r["need_kb"]:
        return f"latency: memory {m:.0%}, issue {i:.0%} of the time, too few bytes in flight"
    return f"memory {m:.0%}, issue {i:.0%} of the time: other stalls (see `codegen sass`)"


def table(rows: list[dict], args) -> str:
    out = [f"M={args.batch} bounds: memory = the bench case's same-run read floor (run) where the current floor kernel "
           f"measured it, else the read floor through {args.floor} (bytes:us) (points), issue at {args.clock_ghz} GHz x {args.sms} SMs x 4, "
           f"Little's law at {args.latency_ns:.0f} ns wants {rows[0]['need_kb']:.1f} KB in flight per SM" if rows else "",
           "",
           "| format | N x K | config | us | sweep us | memory us | issue us | instr/weight | regs | warps/SM | in flight KB/SM "
           "| verdict |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['format']} | {r['N']}x{r['K']} | {r['config']} | {r['us']:.1f} ({r['us_source']}) "
                   f"| {r['db_us']:.1f} | {r['memory_us']:.1f} ({r.get('memory_source', 'points')}) | {r['issue_us']:.1f} | {r['instr_per_weight']:.2f} | {r['registers']} "
                   f"| {r['warps_per_sm']} | {r['flight_kb']:.1f}{' (prefetch)' if r['prefetch'] else ''} "
                   f"| {_verdict(r)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bounds")
    p.add_argument("--formats", nargs="+", default=["gptq"])
    p.add_argument("--shapes", nargs="+", type=_shape, default=[(8192, 28672), (28672, 8192)])
    p.add_argument("--batch", type=int, default=1, help="M (its bucket's database entry is used)")
    p.add_argument("--gpu", default="NVIDIA H100 80GB HBM3", help="whose database and results to read")
    p.add_argument("--arch", default="sm90")
    p.add_argument("--sms", type=int, default=132)
    p.add_argument("--clock-ghz", type=float, default=1.98, help="SM clock (H100 SXM boost: 1.98)")
    p.add_argument("--floor", default=ANCHOR_FLOOR, help="read floor points bytes:us,... (default: ANCHORS.md's H100)")
    p.add_argument("--latency-ns", type=float, default=700.0, help="loaded DRAM latency assumed for Little's law")
    p.add_argument("--results", help="bench results.json (default: bench/results/<gpu>/results.json)")
    p.add_argument("--db", help="tuning database (default: autotune/db/<gpu>.json)")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--md", help="also write the table here")
    args = p.parse_args(argv)
    args.floor_points = parse_floor(args.floor)
    slug = gpu_slug(args.gpu)
    res_path = Path(args.results) if args.results else RESULTS / slug / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    db_path = Path(args.db) if args.db else default_db_path(args.gpu)
    if not db_path.exists():
        raise SystemExit(f"bench.bounds: no tuning database at {db_path}; tune with `python -m autotune sweep` "
                         f"or pass --db")
    entries = json.loads(db_path.read_text()).get("entries", {})
    rows = []
    for name in args.formats:
        spec = ir.get_format(name)
        for N, K in args.shapes:
            e = entries.get(entry_key(spec.key, "triton", N, K, m_bucket(args.batch)))
            if e is None:
                print(f"  {name} {N}x{K}: no M-bucket {m_bucket(args.batch)} entry in {db_path.name}; skipped",
                      file=sys.stderr)
                continue
            try:
                rows.append(bound_row(spec, N, K, e, _measured(results, spec.name, N, K, args.batch), args))
            except SpecError as err:  # a shape the format refuses
                print(f"  {name} {N}x{K}: {err}; skipped", file=sys.stderr)
                continue
            print(f"  {name} {N}x{K}: {_verdict(rows[-1])}", file=sys.stderr, flush=True)
    text = table(rows, args)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
