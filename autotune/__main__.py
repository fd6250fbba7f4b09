"""python -m autotune {sweep, show, check, space}: the autotuner's command line.

  sweep   tune formats x shapes x M buckets on this GPU into autotune/db/<gpu>.json (needs CUDA)
  show    print a tuning database (this GPU's; with --gpu another's; without CUDA every file)
  check   verify (and on a GPU time) one config: the repro command failures are logged with
  space   count the legal and pruned candidates of one problem, with the pruning reasons (CPU is fine)
  plan    what a sweep would run: cases, candidates, estimated device seconds (CPU is fine)
  tvm-build  build TVM candidate kernels on a machine with TVM + nvcc for `sweep --backend tvm
          --tvm-candidates DIR` on the GPU machine (autotune/tvm_candidates.py)

A format is NAME or NAME:OPT=VALUE,OPT=VALUE (e.g. gptq:bits=3,group_size=64); `--formats all` is every
registered format with its default options."""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import torch

import ir
from codegen.arch import ARCHES, default_config, get_arch, kernel_family
from ir import KernelConfig, SpecError
from runtime.tuning import DB_DIR, m_bucket

from .db import DatabaseError, db_path, is_stale, load, load_for_write, stale_reasons
from .space import BACKENDS, Search, candidates, tuning_m
from .sweep import FINAL_RESERVE, Case, SweepInterrupted, result_table, run_sweep, same_kernel, summary, untuned
from .verify import Reference, evaluate
from codegen.__main__ import _parse_value, _shape

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_format(arg: str) -> tuple[ir.FormatSpec, dict]:
    """NAME[:OPT=VALUE,...] -> (spec, options)."""
    name, _, rest = arg.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise SpecError(f"format option {item!r} in {arg!r} is malformed; expected NAME:OPT=VALUE,OPT=VALUE")
        k, v = item.split("=", 1)
        options[k.strip()] = _parse_value(v.strip())
    return ir.get_format(name, **options), options


def format_arg(name: str, options: dict) -> str:
    return name + (":" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) if options else "")


def _backends(choice: str) -> list[str]:
    if choice == "all":
        return list(BACKENDS)
    if choice not in BACKENDS:
        raise SpecError(f"backend {choice!r} cannot be tuned yet: only {list(BACKENDS)} can (the TVM backend's "
                        f"kernels are not loadable at run time yet)")
    return [choice]


def expand_formats(formats: list[str]) -> list[str]:
    """`all` stands for every registered format (default options), in registry order; duplicates dropped."""
    out = []
    for f in formats:
        out += ir.list_formats() if f == "all" else [f]
    return list(dict.fromkeys(out))


def plan_cases(formats: list[str], shapes, batches: list[int], backends: list[str], out=print) -> tuple[list, dict]:
    """(cases, {format arg: options}); shapes a format cannot take are reported and left out, and so is a
    format whose spec another one in the list already is (an alias: the database keys by spec)."""
    cases, options, specs = [], {}, {}
    buckets = sorted({m_bucket(b) for b in batches})
    for arg in expand_formats(formats):
        spec, opts = parse_format(arg)
        if spec.key in specs:
            out(f"  skipping {arg}: the same format as {specs[spec.key]}")
            continue
        specs[spec.key] = arg
        options[arg] = opts
        for N, K in shapes:
            try:
                spec.check_shape(N, K)
            except SpecError as e:
                out(f"  skipping {arg} {N}x{K}: {e}")
                continue
            for backend in backends:
                cases += [Case(arg, spec, N, K, b, tuning_m(b, batches), backend) for b in buckets]
    return cases, options


def stale_cases(path: Path, header: dict, out=print) -> tuple[list, dict]:
    """Cases for every entry of the database that was tuned with other soft versions than `header`'s."""
    data = load_for_write(path, header)
    cases, options = [], {}
    for key, e in sorted((data or {}).get("entries", {}).items()):
        if not is_stale(e, data["header"], header):
            continue
        spec_key, backend, N, K, bucket = key.split("|")
        arg = format_arg(e["format"], e.get("options", {}))
        try:
            spec, opts = parse_format(arg)
        except SpecError as err:
            out(f"  cannot re-tune {key}: {err}")
            continue
        if spec.key != spec_key:
            out(f"  cannot re-tune {arg} {N}x{K}: the format's definition changed since it was tuned "
                f"(spec key {spec.key[:12]} != {spec_key[:12]}); tune it afresh")
            continue
        options[arg] = opts
        cases.append(Case(arg, spec, int(N), int(K), int(bucket), e.get("M") or tuning_m(int(bucket)), backend))
    return cases, options


def cmd_sweep(args) -> int:
    if args.backend == "tvm":   # prebuilt candidates: autotune/tvm_candidates.py
        from .tvm_candidates import cmd_sweep as sweep_tvm
        return sweep_tvm(args)
    if not torch.cuda.is_available():
        print("autotune sweep needs a CUDA GPU: it times kernels, and the CPU interpreter has no meaningful "
              "speed. On a CPU, `python -m autotune show` prints databases and `python -m autotune check` "
              "verifies one config under TRITON_INTERPRET=1.", file=sys.stderr)
        return 2
    from runtime.device import machine_header
    header = machine_header()
    path = db_path(header["gpu"], args.db_dir)
    print(f"tuning on {header['gpu']} ({header['arch']}, template hash {header['template_hash']}) into {path}")
    cases, options = plan_cases(args.formats or [], args.shapes or [], args.batches or [], _backends(args.backend))
    if args.retune_stale and not args.fresh:
        more, more_opts = stale_cases(path, header)
        print(f"  {len(more)} stale entries to re-tune")
        seen = {(c.spec.key, c.backend, c.N, c.K, c.bucket) for c in cases}
        cases += [c for c in more if (c.spec.key, c.backend, c.N, c.K, c.bucket) not in seen]
        options.update(more_opts)
    if not cases:
        print("nothing to tune: give --formats, --shapes and --batches (or --retune-stale)", file=sys.stderr)
        return 2
    print(tried_summary(args.tries or (), cases, header["arch"]), end="")
    t0 = time.perf_counter()
    try:
        with interrupt_once():
            rows = run_sweep(cases, header=header, path=path, device="cuda", timer=sweep_timer,
                             budget_s=args.budget_s, options=options, jobs=args.jobs, fresh=args.fresh, force=args.force,
                             max_candidates=args.max_candidates, dtype=DTYPES[args.dtype],
                             patience=args.patience or None, seeds=not args.no_seeds, tries=tuple(args.tries or ()))
    except SweepInterrupted as stop:
        _print_results(stop.rows, t0)
        again = "the same command without --force" if args.force else "the same command"
        print(f"\n{stop}: their winners are saved in {path}; run {again} again to tune the rest "
              f"(tuned cases are skipped)", file=sys.stderr)
        return 130
    _print_results(rows, t0)
    return 0 if all(r.winner is not None for r in rows) else 1


@contextlib.contextmanager
def interrupt_once():
    """SIGINT raises KeyboardInterrupt once; later ones are ignored until the block ends, so the sweep can stop its
    compile pool and report. GNU `timeout -s INT` signals the child and then its whole process group: without this
    the second SIGINT landed in the pool's shutdown and ended the sweep with a traceback."""
    previous = signal.getsignal(signal.SIGINT)

    def first(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_results(rows, t0: float) -> None:
    if rows:
        print()
        print(result_table(rows))
        print(summary(rows, time.perf_counter() - t0))


def tried_summary(tries, cases, arch: str) -> str:
    """One line per --try config: in how many of the cases it will be measured (the others' spaces do not hold it:
    another kernel family or a pruning rule), with one reason when it is in none."""
    lines = []
    for cfg in tries:
        reasons = [Search(c.spec, get_arch(arch), c.M, c.N, c.K, c.backend, c.family).reason(cfg) for c in cases]
        held = sum(r is None for r in reasons)
        why = "" if held else f": {next(r for r in reasons if r)}"
        lines.append(f"  --try {cfg.label}: measured in {held} of {len(cases)} cases{why}\n")
    return "".join(lines)


def _kernel_state(key: str, e: dict, header: dict) -> str:
    """"same" when the current templates still render the kernel the entry timed (Triton entries; the hash
    covers the generated source), "changed" when they do not, "-" when that cannot be told here."""
    spec_key, backend, N, K, bucket = key.split("|")
    if backend != "triton" or "kernel_hash" not in e:
        return "-"
    try:
        spec, _ = parse_format(format_arg(e["format"], e.get("options", {})))
    except SpecError:
        return "changed"
    case = Case(e["format"], spec, int(N), int(K), int(bucket), int(bucket), backend)
    return "same" if spec.key == spec_key and same_kernel(e, case, header["arch"]) else "changed"


def _show_file(path: Path, current: dict | None) -> None:
    data = load(path)
    h = data["header"]
    print(f"{path}: {len(data['entries'])} entries")
    print("  header: " + ", ".join(f"{k}={h.get(k)}" for k in sorted(h)))
    ref = current or h
    if current is not None:
        from runtime.tuning import compare_headers
        hard, soft = compare_headers(h, current)
        state = "IGNORED here (hard mismatch: " + "; ".join(hard) + ")" if hard else \
            "stale here (" + "; ".join(soft) + ")" if soft else "matches this machine"
        print(f"  {state}")
    head = ("format", "N", "K", "backend", "M bucket", "config", "us", "runner-up", "us", "default us", "speedup",
            "kernel", "stale")
    rows = []
    for key, e in data["entries"].items():
        _, backend, N, K, bucket = key.split("|")
        ru = e.get("runner_up") or {}
        d = (e.get("default") or {}).get("us")
        rows.append((format_arg(e["format"], e.get("options", {})), N, K, backend,
                     ">256" if bucket == "512" else bucket, KernelConfig(**e["config"]).label, f"{e['us']:.2f}",
                     KernelConfig(**ru["config"]).label if ru else "-", f"{ru['us']:.2f}" if ru else "-",
                     f"{d:.2f}" if d else "-", f"{d / e['us']:.2f}x" if d else "-", _kernel_state(key, e, h),
                     "yes: " + "; ".join(stale_reasons(e, h, ref)) if is_stale(e, h, ref) else ""))
    changed = sum(r[11] == "changed" for r in rows)
    if changed:
        print(f"  {changed} of {len(rows)} entries timed a kernel the current templates no longer generate "
              f"(kernel = changed): the runtime ignores them and `sweep` re-tunes them")
    rows.sort(key=lambda r: (r[0], int(r[1]), int(r[2]), r[3], 10 ** 6 if r[4] == ">256" else int(r[4])))
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    for r in [head] + rows:
        print("  " + "  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip())


def cmd_show(args) -> int:
    folder = Path(args.db_dir or DB_DIR)
    current = None
    if args.gpu:
        paths = [db_path(args.gpu, folder)]
    elif torch.cuda.is_available():
        from runtime.device import machine_header
        current = machine_header()
        paths = [db_path(current["gpu"], folder)]
    else:
        paths = sorted(folder.glob("*.json"))
        if not paths:
            print(f"no tuning databases in {folder}")
            return 0
    status = 0
    for p in paths:
        if not p.exists():
            known = ", ".join(x.stem for x in sorted(folder.glob("*.json"))) or "none"
            print(f"no tuning database {p} (known: {known})")
            status = 1
            continue
        try:
            _show_file(p, current)
        except (DatabaseError, ValueError) as e:
            print(f"{p}: {e}", file=sys.stderr)
            status = 1
    return status


def cmd_check(args) -> int:
    spec, _ = parse_format(args.format)
    N, K = args.shape
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")   # before the generated module imports triton.jit
    _backends(args.backend)
    arch = args.arch or (get_arch_of_device() if cuda else "sm90")
    config = KernelConfig(**json.loads(args.config))
    ref = Reference.build(spec, args.format, N, K, "cuda" if cuda else "cpu", seed=N + K)
    timer = None
    if cuda:
        from bench.timing import time_us
        timer = time_us
    t = evaluate(ref, args.batch, config, arch=arch, family=kernel_family(args.batch), dtype=DTYPES[args.dtype],
                 timer=timer, rep_ms=100, backend=args.backend, raise_errors=True)
    timing = f", {t.us:.2f} us" if cuda else " (verified under the interpreter; not timed)"
    print(f"{args.format} {N}x{K} M={args.batch} {config.label}: relative error {t.rel_err:.3g}{timing}")
    return 0


def sweep_timer(fn, rep_ms: int) -> float:
    """bench.timing.time_us's method (CUDA-graph replay of one call, do_bench median, L2 flushed), with
    do_bench's warm-up no longer than the window: a 5 ms screen then costs ~10 ms instead of 30 (time_us
    warms up 25 ms whatever the window); the finalists' 100 ms windows keep the 25 ms warm-up."""
    import triton.testing

    from bench.timing import capture
    g = capture(fn)
    return 1000.0 * triton.testing.do_bench(g.replay, warmup=min(25, rep_ms), rep=rep_ms, return_mode="median")


PLAN_FINAL_S = 0.2   # one finalist's re-timing: capture, 25 ms warm-up + FINAL_REP_MS window, verification


PLAN_DEFAULTS = (0.16, 24)   # (s per candidate, candidates per case) without a database to calibrate from (H100, s4)


def calibrate(data: dict, min_entries: int = 20) -> dict[str, tuple[float, int]]:
    """Per kernel family, (device seconds per candidate, candidates per case) as the sweeps that wrote `data`
    measured them: each entry records its case's tuning_s (search and finalists) and the candidates it tried.
    Families with fewer than `min_entries` such entries are left out (the defaults serve them)."""
    agg: dict[str, list] = collections.defaultdict(lambda: [0, 0.0, 0])
    for e in data.get("entries", {}).values():
        if isinstance(e.get("tuning_s"), (int, float)) and isinstance(e.get("tried"), int) and e["tried"] > 0:
            a = agg[e.get("family", "?")]
            a[0], a[1], a[2] = a[0] + 1, a[1] + e["tuning_s"], a[2] + e["tried"]
    return {fam: (max(0.01, (secs / n - 3 * PLAN_FINAL_S) / (tried / n)), round(tried / n))
            for fam, (n, secs, tried) in agg.items() if n >= min_entries}


def _per_family(value, family: str):
    return value[family] if isinstance(value, dict) else value


def plan_estimate(cases, arch: str, *, per_candidate_s, candidates_per_case, budget_s: float,
                  prepare_s: float, max_candidates: int | None = None) -> list[dict]:
    """Per case: the descent's first ring (the default and its legal one-axis neighbours, exact), the
    candidates the sweep is expected to try (at least the ring, else `candidates_per_case`: the H100
    sweeps tried 26-27 with database seeds and patience), and its expected seconds: the search (min(budget,
    tried x per candidate)) plus three finalists re-timed, plus `prepare_s` for the first case of each (format,
    shape) problem (synthetic weights and their reference decode). `per_candidate_s` and `candidates_per_case`
    are numbers or {kernel family: number} (cmd_plan's calibration)."""
    a = get_arch(arch)
    rows, seen = [], set()
    for c in cases:
        search = Search(c.spec, a, c.M, c.N, c.K, c.backend, c.family)
        dflt = default_config(c.spec, (c.M, c.N, c.K), a)
        search.mark([dflt])
        ring = 1 + len(search.lines(dflt))
        tried = max(ring, _per_family(candidates_per_case, c.family))
        if max_candidates:
            tried = min(tried, max_candidates)
        secs = min(budget_s * (1 - FINAL_RESERVE), tried * _per_family(per_candidate_s, c.family)) + 3 * PLAN_FINAL_S
        problem = (c.spec.key, c.N, c.K)
        if problem not in seen:
            seen.add(problem)
            secs += prepare_s
        rows.append({"case": c, "ring": ring, "tried": tried, "seconds": secs})
    return rows


def cmd_plan(args) -> int:
    cases, _ = plan_cases(args.formats or [], args.shapes or [], args.batches or [], _backends(args.backend))
    if not cases:
        print("nothing to plan: give --formats, --shapes and --batches", file=sys.stderr)
        return 2
    calib = {}
    if args.gpu:   # leave out what that GPU's database already holds for the current kernels
        path = db_path(args.gpu, args.db_dir)
        if path.exists():
            data = load(path)
            todo = untuned(cases, data, data["header"])
            print(f"{path}: {len(cases) - len(todo)} of {len(cases)} cases already tuned for the current kernels")
            cases = todo
            calib = calibrate(data)
        else:
            print(f"{path}: no database yet; every case is to tune")
        if not cases:
            print("nothing left to tune")
            return 0
    families = sorted({c.family for c in cases})
    per_cand, per_case = {}, {}
    for f in families:
        found = "measured by this GPU's sweeps" if f in calib else "default (H100, session 4)"
        per_cand[f], per_case[f] = calib.get(f, PLAN_DEFAULTS)
        sources = [found, found]
        if args.per_candidate_s:
            per_cand[f], sources[0] = args.per_candidate_s, "given"
        if args.candidates_per_case:
            per_case[f], sources[1] = args.candidates_per_case, "given"
        print(f"  {f}: {per_cand[f]:.3f} s per candidate ({sources[0]}), {per_case[f]} candidates per case "
              f"({sources[1]})")
    rows = plan_estimate(cases, args.arch, per_candidate_s=per_cand, candidates_per_case=per_case,
                         budget_s=args.budget_s, prepare_s=args.prepare_s, max_candidates=args.max_candidates)
    by_bucket = collections.defaultdict(lambda: [0, 0, 0, 0.0])
    for r in rows:
        b = by_bucket[r["case"].bucket]
        b[0] += 1
        b[1] += r["ring"]
        b[2] += r["tried"]
        b[3] += r["seconds"]
    formats = len({c.fmt_arg for c in cases})
    shapes = len({(c.N, c.K) for c in cases})
    print(f"{len(cases)} cases ({formats} formats x {shapes} shapes x M buckets, shapes a format refuses left "
          f"out) on {args.arch}; budget {args.budget_s:g} s per case")
    print(f"  {'M bucket':>8}  {'family':>6}  {'cases':>6}  {'first ring':>10}  {'candidates':>10}  {'est. s':>8}")
    for bucket, (n, ring, tried, secs) in sorted(by_bucket.items()):
        label = ">256" if bucket == 512 else str(bucket)
        print(f"  {label:>8}  {kernel_family(bucket):>6}  {n:6d}  {ring:10d}  {tried:10d}  {secs:8.0f}")
    total = sum(r["seconds"] for r in rows)
    tried = sum(r["tried"] for r in rows)
    print(f"  total: {tried} candidates, about {total:.0f} s of device time ({total / 60:.1f} min, "
          f"{total / len(rows):.1f} s per case); about {int(-(-total // 560))} device calls of 10 minutes")
    return 0


def get_arch_of_device() -> str:
    from codegen.arch import arch_of_capability
    return arch_of_capability(*torch.cuda.get_device_capability())


def cmd_space(args) -> int:
    spec, _ = parse_format(args.format)
    N, K = args.shape
    M = tuning_m(m_bucket(args.batch), [args.batch])
    for backend in _backends(args.backend):
        kept, rejected = candidates(spec, get_arch(args.arch), M, N, K, backend)
        print(f"{args.format} {N}x{K} M={M} ({kernel_family(M)}, {backend}, {args.arch}): {len(kept)} legal of "
              f"{len(kept) + len(rejected)} candidates")
        reasons = collections.Counter(r.split(":")[0] for _, r in rejected)
        for why, n in reasons.most_common():
            print(f"  {n:6d} pruned: {why}")
    return 0


def _config_label(text: str) -> KernelConfig:
    try:
        return KernelConfig.from_label(text)
    except SpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autotune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep", help="tune on this GPU and write autotune/db/<gpu>.json")
    s.add_argument("--formats", nargs="+", metavar="FORMAT", help="formats, or `all` (every registered one)")
    s.add_argument("--shapes", nargs="+", type=_shape, metavar="N,K")
    s.add_argument("--batches", nargs="+", type=int, metavar="M", help="M values; each is tuned at its M bucket")
    s.add_argument("--backend", default="triton", choices=("triton", "tvm", "all"))
    s.add_argument("--tvm-candidates", default=None, metavar="DIR",
                   help="with --backend tvm: the folder `python -m autotune tvm-build` wrote")
    s.add_argument("--budget-s", type=float, default=15.0, help="seconds per (format, shape, M bucket) case")
    s.add_argument("--max-candidates", type=int, default=None, help="stop a case after this many candidates")
    s.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 4), help="parallel compiles")
    s.add_argument("--patience", type=int, default=16,
                   help="end a case after this many candidates in a row without a 1%% improvement (0: use the budget)")
    s.add_argument("--no-seeds", action="store_true",
                   help="do not start from the database's winners at the nearest M buckets and shapes")
    s.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    s.add_argument("--try", dest="tries", nargs="+", type=_config_label, metavar="LABEL",
                   help="configs (labels like m1n64k128s8w2p2r128) measured first in every case whose space holds "
                        "them, e.g. one found with `python -m bench.probe`; the case still searches on")
    s.add_argument("--retune-stale", action="store_true", help="also re-tune every stale entry of this GPU's file")
    s.add_argument("--force", action="store_true", help="re-tune requested cases even when tuned")
    s.add_argument("--fresh", action="store_true",
                   help="replace this GPU's file (needed after a template change: the old file is then ignored)")
    s.add_argument("--db-dir", default=None, help=f"database folder (default {DB_DIR})")
    s.set_defaults(fn=cmd_sweep)
    s = sub.add_parser("show", help="print a tuning database")
    s.add_argument("--gpu", default=None, help="GPU name or file slug (default: this GPU, or every file)")
    s.add_argument("--db-dir", default=None)
    s.set_defaults(fn=cmd_show)
    s = sub.add_parser("check", help="verify and time one config (the repro of a failing candidate)")
    s.add_argument("--format", required=True)
    s.add_argument("--shape", type=_shape, required=True)
    s.add_argument("--batch", type=int, required=True)
    s.add_argument("--config", required=True, help="KernelConfig as JSON")
    s.add_argument("--backend", default="triton")
    s.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    s.add_argument("--arch", default=None, choices=sorted(ARCHES))
    s.set_defaults(fn=cmd_check)
    s = sub.add_parser("plan", help="cases, candidates and estimated device time of a sweep (CPU is fine)")
    s.add_argument("--formats", nargs="+", metavar="FORMAT", help="formats, or `all`")
    s.add_argument("--shapes", nargs="+", type=_shape, metavar="N,K")
    s.add_argument("--batches", nargs="+", type=int, metavar="M")
    s.add_argument("--backend", default="triton", choices=("triton", "all"))
    s.add_argument("--arch", default="sm90", choices=sorted(ARCHES))
    s.add_argument("--budget-s", type=float, default=15.0, help="the sweep's seconds per case")
    s.add_argument("--max-candidates", type=int, default=None, help="the sweep's cap per case")
    s.add_argument("--per-candidate-s", type=float, default=None,
                   help="device seconds per candidate (compile wait, verify, screen); default: measured per kernel "
                        "family from the --gpu database's entries, else 0.16 (H100, session 4)")
    s.add_argument("--candidates-per-case", type=int, default=None,
                   help="candidates a case tries before it converges; default: measured per family from the --gpu "
                        "database, else 24 (H100, session 4, with database seeds and --patience 16)")
    s.add_argument("--prepare-s", type=float, default=1.0, help="seconds to prepare one (format, shape) problem")
    s.add_argument("--gpu", default=None,
                   help="leave out the cases this GPU's database (e.g. 'NVIDIA H100 80GB HBM3') already holds")
    s.add_argument("--db-dir", default=None)
    s.set_defaults(fn=cmd_plan)
    s = sub.add_parser("space", help="count legal and pruned candidates for one problem")
    s.add_argument("--format", required=True)
    s.add_argument("--shape", type=_shape, required=True)
    s.add_argument("--batch", type=int, required=True)
    s.add_argument("--backend", default="triton")
    s.add_argument("--arch", default="sm90", choices=sorted(ARCHES))
    s.set_defaults(fn=cmd_space)
    from .tvm_candidates import add_build_command
    add_build_command(sub, _shape)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return args.fn(args)
    except (SpecError, DatabaseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
