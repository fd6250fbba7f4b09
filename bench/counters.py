"""What bounds one tuned kernel, measured: its hardware counters under Nsight Compute (ncu).

`bench.bounds` predicts a bound offline (bytes, SASS instructions, bytes in flight); this reads the GPU's own
counters for the same kernel, so a note can say "memory", "issue" or "latency" with evidence:

  dram      DRAM bytes read and DRAM throughput as a % of its peak (the read floor kernel is the practical 100%)
  issue     issue slots used (% of active cycles), and the busiest pipes (% of their peak: alu is the integer
            pipe that PRMT / LOP3 / shifts share at half the FMA rate, fma, fp16, lsu, tensor ...)
  occupancy achieved vs theoretical warps per SM, registers per thread, grid size
  stalls    the top reasons warps waited, in cycles per issued instruction (long_scoreboard: a global load's data;
            wait: fixed-latency dependencies; math_pipe_throttle: a busy pipe; barrier, lg_throttle, ...)

The verdict: "memory" when DRAM runs at >= 80% of its peak; else "issue (<pipe>)" when a pipe or the issue
slots are >= 80% busy; else "latency (<top stall>)": neither resource is saturated and warps mostly wait.

    python -m bench.counters FORMAT --shape N,K --batch M [--config LABEL] [--json OUT] [-o k=v]
    python -m bench.counters report OUT.jsonl       # the table again from saved metrics (summaries recomputed)

The parent process works out the kernel (the config the tuning database holds for this GPU, else --config, else
the heuristic default) and runs ncu on a child of this module that builds it and launches it `--warmup` + 1
times; ncu profiles the last launch (caches flushed, clocks not locked: as `bench.timing` runs it). GPU only."""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys

SECTIONS = ("SpeedOfLight", "LaunchStats", "Occupancy", "WarpStateStats", "ComputeWorkloadAnalysis",
            "MemoryWorkloadAnalysis", "InstructionStats")
DRAM_PCT = "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"
ISSUE_PCT = "smsp__issue_active.avg.pct_of_peak_sustained_active"
PIPE_PREFIX = "sm__inst_executed_pipe_"
PIPE_SUFFIX = ".avg.pct_of_peak_sustained_active"
STALL_PREFIX = "smsp__average_warp_latency_issue_stalled_"
STALL_ALT_PREFIX = "smsp__average_warps_issue_stalled_"
BUSY = 80.0   # % of a peak at which a resource counts as the bound


def parse_raw_csv(text: str) -> dict[str, dict[str, float | str]]:
    """ncu `--csv --page raw` output -> {kernel name: {metric: value}} (numbers as floats, "1,234" included; the
    units row dropped). Lines before the header (the child's own prints, ncu's ==PROF== lines) are skipped."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    if not lines:
        raise ValueError("no ncu CSV rows in the output: did ncu profile any kernel? (check --kernel-name and "
                         "--launch-skip against the kernels the program launched)")
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    header, body = rows[0], rows[1:]
    if "Kernel Name" not in header:
        raise ValueError(f"not an ncu raw CSV: no 'Kernel Name' column in {header[:8]}")
    out = {}
    for row in body:
        rec = dict(zip(header, row))
        if len(row) != len(header) or rec.get("ID", "").strip() == "":
            continue   # the units row has empty identity columns
        metrics: dict[str, float | str] = {}
        for k, v in rec.items():
            try:
                metrics[k] = float(v.replace(",", ""))
            except ValueError:
                metrics[k] = v
        out[str(rec["Kernel Name"])] = metrics
    return out


def _pipes(m: dict) -> list[tuple[str, float]]:
    """[(pipe, % of its peak)] busiest first: instructions issued to each pipe (sm__inst_executed_pipe_*), else the
    pipe's active cycles (sm__pipe_*_cycles_active), as % of peak over active cycles."""
    for prefix, suffix in ((PIPE_PREFIX, PIPE_SUFFIX), ("sm__pipe_", "_cycles_active" + PIPE_SUFFIX)):
        got = [(k[len(prefix):len(k) - len(suffix)], v) for k, v in m.items()
               if k.startswith(prefix) and k.endswith(suffix) and isinstance(v, float)]
        if got:
            return sorted(got, key=lambda t: -t[1])
    return []


def _stalls(m: dict) -> list[tuple[str, float]]:
    """[(reason, cycles per issued instruction)] largest first, from WarpStateStats' per-reason ratios."""
    got = {}
    for k, v in m.items():
        if not isinstance(v, float) or not k.endswith(".ratio") or "issue_stalled_" not in k:
            continue
        if not (k.startswith(STALL_PREFIX) or k.startswith(STALL_ALT_PREFIX)):
            continue
        reason = k.split("issue_stalled_", 1)[1].split(".")[0].replace("_per_issue_active", "")
        if reason.endswith("_not_issued"):
            continue
        got.setdefault(reason, v)
    return sorted(got.items(), key=lambda t: -t[1])


def summarize(m: dict) -> dict:
    """The figures that name a bound, from one kernel's raw metrics (missing ones are None), and the verdict."""
    def num(name):
        v = m.get(name)
        return v if isinstance(v, float) else None
    pipes, stalls = _pipes(m)[:4], _stalls(m)[:4]
    s = {
        "time_us": (num("gpu__time_duration.sum") or 0) / 1e3 or None,
        "dram_bytes": num("dram__bytes_read.sum"),
        "dram_pct": num(DRAM_PCT),
        "issue_pct": num(ISSUE_PCT),
        "pipes_pct": pipes,
        "occupancy_pct": num("sm__warps_active.avg.pct_of_peak_sustained_active"),
        "theoretical_occupancy_pct": num("sm__maximum_warps_per_active_cycle_pct"),
        "registers": num("launch__registers_per_thread"),
        "grid": num("launch__grid_size"),
        "warp_instructions": num("smsp__inst_executed.sum") or num("sm__inst_executed.sum"),
        "stalls": stalls,
    }
    if s["issue_pct"] is None and num("smsp__issue_active.avg.per_cycle_active") is not None:
        s["issue_pct"] = 100 * num("smsp__issue_active.avg.per_cycle_active")
    if num("dram__bytes.sum.per_second") is not None:
        s["dram_tbps"] = num("dram__bytes.sum.per_second") / 1e12
    elif s["time_us"] and s["dram_bytes"]:
        s["dram_tbps"] = s["dram_bytes"] / s["time_us"] / 1e6
    s["verdict"] = verdict(s)
    return s


def verdict(s: dict) -> str:
    if (s.get("dram_pct") or 0) >= BUSY:
        return "memory"
    busy = [(name, v) for name, v in s.get("pipes_pct") or [] if v >= BUSY]
    if busy:
        return f"issue ({busy[0][0]} pipe {busy[0][1]:.0f}%)"
    if (s.get("issue_pct") or 0) >= BUSY:
        return f"issue (slots {s['issue_pct']:.0f}%)"
    top = (s.get("stalls") or [("unknown", 0.0)])[0]
    return f"latency (top stall: {top[0]})"


def format_row(case: str, s: dict) -> str:
    f = lambda v, fmt: "n/a" if v is None else format(v, fmt)   # noqa: E731
    pipes = ", ".join(f"{n} {v:.0f}%" for n, v in s["pipes_pct"][:3]) or "n/a"
    stalls = ", ".join(f"{n} {v:.1f}" for n, v in s["stalls"][:3]) or "n/a"
    return (f"| {case} | {f(s['time_us'], '.1f')} | {f(s.get('dram_tbps'), '.2f')} | {f(s['dram_pct'], '.0f')}% | "
            f"{f(s['issue_pct'], '.0f')}% | {pipes} | {f(s['occupancy_pct'], '.0f')}% / "
            f"{f(s['theoretical_occupancy_pct'], '.0f')}% | {f(s['registers'], '.0f')} | {f(s['grid'], '.0f')} | "
            f"{stalls} | {s['verdict']} |")


HEADER = ("| case | ncu us | DRAM TB/s | DRAM % peak | issue slots | busiest pipes | occupancy achieved / theor. "
          "| regs | grid | top stalls (cycles per issue) | verdict |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def _problem(args):
    """(spec, config, kernel name) of the case, as the runtime would pick it on this GPU."""
    import torch

    import ir
    from codegen.__main__ import _options
    from codegen.arch import arch_of_capability, default_config
    from codegen.plan import lower
    from ir import KernelConfig

    from .probe import _db_configs
    spec = ir.get_format(args.format, **_options(args.option))
    N, K = args.shape
    arch = arch_of_capability(*torch.cuda.get_device_capability())
    if args.config:
        cfg = KernelConfig.from_label(args.config)
    else:
        cfg = (_db_configs(spec, N, K, args.batch) or [default_config(spec, (args.batch, N, K), arch)])[0]
    return spec, arch, cfg, lower(spec, args.batch, N, K, cfg, arch).name


def _child(args) -> int:
    import torch

    from runtime.kernels import get_kernel

    from .probe import gpu_weights
    from .run import check_output, reference
    spec, arch, cfg, _ = _problem(args)
    N, K = args.shape
    t, W, _ = gpu_weights(spec, N, K)
    x = torch.randn(args.batch, K, device="cuda").half()
    out = torch.empty(args.batch, N, device="cuda", dtype=torch.float16)
    mod = get_kernel(spec, args.batch, N, K, arch, cfg)
    for _ in range(args.warmup + 1):
        mod.run(x, t, N, out=out)
    torch.cuda.synchronize()
    # the bench's own check: activation quantization modelled where the format has it, the same tolerance
    verdict = check_output(out, reference(spec, t, W.double(), x), x.dtype)
    if "reason" in verdict:
        print(f"bench.counters: {spec.name} {N}x{K} M={args.batch} {cfg.label}: {verdict['reason']}", file=sys.stderr)
        return 1
    return 0


def report(path: str) -> str:
    """The markdown table of a --json file, each summary recomputed from its saved raw metrics."""
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return "\n".join([HEADER, *(format_row(r["case"], summarize(r["metrics"])) for r in recs)])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        if len(argv) != 2:
            print("usage: python -m bench.counters report OUT.jsonl", file=sys.stderr)
            return 2
        print(report(argv[1]))
        return 0
    from codegen.__main__ import _shape
    p = argparse.ArgumentParser(prog="python -m bench.counters", description=__doc__.split("\n\n")[0])
    p.add_argument("format")
    p.add_argument("-o", "--option", action="append")
    p.add_argument("--shape", type=_shape, required=True, help="N,K")
    p.add_argument("--batch", type=int, default=1, help="M (default 1)")
    p.add_argument("--config", help="config label (default: this GPU's database entry, else the heuristic)")
    p.add_argument("--warmup", type=int, default=3, help="launches before the profiled one (default 3)")
    p.add_argument("--json", help="append {case, config, summary, metrics} to this JSON-lines file")
    p.add_argument("--ncu", default=os.environ.get("NCU", "ncu"), help="the ncu binary (default: $NCU or ncu)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args)
    ncu = shutil.which(args.ncu)
    if ncu is None:
        p.error(f"ncu not found as {args.ncu!r}: install Nsight Compute or pass --ncu /path/to/ncu")
    _, _, cfg, name = _problem(args)
    child = [sys.executable, "-m", "bench.counters", *argv, "--config", cfg.label, "--child"]
    cmd = [ncu, "--target-processes", "all", "--kernel-name", f"regex:^{name}$", "--launch-skip", str(args.warmup),
           "--launch-count", "1", "--clock-control", "none", "--cache-control", "all", "--print-units", "base",
           *(x for sec in SECTIONS for x in ("--section", sec)), "--csv", "--page", "raw", *child]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        print(f"bench.counters: ncu exited {proc.returncode} for {name}", file=sys.stderr)
        return proc.returncode
    kernels = parse_raw_csv(proc.stdout)
    match = [k for k in kernels if k == name or k.startswith(name + "(")]
    if not match:
        print(f"bench.counters: ncu profiled {sorted(kernels)}, not {name}", file=sys.stderr)
        return 1
    m = kernels[match[0]]
    s = summarize(m)
    case = f"{args.format} {args.shape[0]}x{args.shape[1]} M={args.batch} {cfg.label}"
    print(HEADER)
    print(format_row(case, s))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"case": case, "config": cfg.label, "summary": s, "metrics": m}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
