"""Sweeps: tune (format, N, K, M bucket, backend) cases within a time budget and record the winners.

Per case: the heuristic default (codegen.arch.default_config) is evaluated first, then `space.Search`
proposes candidates (coordinate descent over the pruned space, see space.py). They go in chunks:
compiled ahead of time by a pool of worker processes into the triton cache the JIT then hits
(autotune/aot.py; a kernel that fails to compile there is scored as a build failure without being
compiled again), then each verified and screened with a short timing window (`verify.evaluate`,
SCREEN_REP_MS here). The search stops when nothing new is left to propose or the case's budget is
spent (what was measured so far is kept). Finally the two best candidates and the default are
re-timed side by side (FINAL_REP_MS, fresh data, verified again): the fastest is the winner, the
next the runner-up, and the default's figure gives the speedup. The entry is written to the database
at once, so an interrupted sweep resumes where it stopped.

Two things keep a case short. Seeds: the winners already in the database for the same format (or a
sibling format), backend and kernel family at the nearest M buckets and shapes (`seed_configs`) are
measured right after the default, so the descent starts near where neighbouring problems ended (the M buckets of one shape are tuned in
ascending order, each seeding the next). Patience: a case stops once `patience` candidates in a row did not
beat the best so far by more than IMPROVE (the descent has converged; the budget is the hard cap)."""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from codegen.arch import default_config, get_arch, kernel_family
from codegen.triton_backend import tuned_kernel_hash
from ir import FormatSpec, KernelConfig, get_format
from runtime.tuning import entry_matches_kernel

from .aot import CompilePool, capture
from .db import entry_key, is_stale, load_for_write, make_entry, merge_entries
from .space import Search
from .verify import FINAL_REP_MS, Reference, Timer, Trial, build_module, evaluate, log, repro_command

FINAL_RESERVE = 0.15        # share of a case's budget kept for re-timing the finalists
FIRST_CHUNK = 4             # candidates in a case's first chunk, before the seconds per candidate are known
IMPROVE = 0.01              # a candidate "improves" when it is this much faster than the best so far
SEEDS = 6                   # database winners measured right after the default (see seed_configs)
SIBLING = 1.0               # seed distance added for a sibling format's entry (as far as the next M bucket)
SCREEN_REP_MS = 5           # do_bench window while screening (the finalists get FINAL_REP_MS): a 15-500 us
                            # kernel replays 10-300 times, enough to rank; the best two are re-timed anyway


@dataclass(frozen=True)
class Case:
    fmt_arg: str
    spec: FormatSpec
    N: int
    K: int
    bucket: int
    M: int                      # the M the bucket is tuned at (space.tuning_m)
    backend: str = "triton"

    @property
    def family(self) -> str:
        return kernel_family(self.M)

    @property
    def label(self) -> str:
        return f"{self.fmt_arg} {self.N}x{self.K} M<={self.bucket}" if self.bucket != 512 else \
            f"{self.fmt_arg} {self.N}x{self.K} M>256"


@dataclass
class CaseResult:
    case: Case
    trials: dict = field(default_factory=dict)      # KernelConfig -> Trial (screening)
    winner: Trial | None = None
    runner_up: Trial | None = None
    default: Trial | None = None                    # the default, re-timed next to the winner
    seconds: float = 0.0
    stopped_by_budget: bool = False

    @property
    def failed(self) -> int:
        return sum(not t.ok for t in self.trials.values())

    @property
    def speedup(self) -> float:
        if self.winner is None or self.default is None or not self.default.ok:
            return math.nan
        return self.default.us / self.winner.us


def _ranked(trials) -> list[Trial]:
    return sorted((t for t in trials if t.ok), key=lambda t: t.us)


def _precompile(pool: CompilePool | None, ref: Reference, case: Case, modules: dict, dtype) -> dict:
    """Compile the chunk's kernels in the pool; {config: one-line error} for those that failed to compile.
    A module whose run() fails before reaching its kernel is left to evaluate(), which scores it."""
    if pool is None or not modules:
        return {}
    x = torch.zeros(case.M, ref.K, dtype=dtype, device=ref.device)
    out = torch.empty(case.M, ref.N, dtype=dtype, device=ref.device)
    jobs = {}
    for cfg, mod in modules.items():
        try:
            jobs[cfg] = capture(lambda: mod.run(x, ref.tensors, ref.N, out=out))
        except Exception:  # noqa: BLE001 (scored by evaluate, which makes the same call)
            jobs[cfg] = []
    flat = [j for js in jobs.values() for j in js]
    results = iter(pool.compile(flat))
    errors = {}
    for cfg, js in jobs.items():
        errs = [err for _, err, _ in (next(results) for _ in js) if err]
        if errs:
            errors[cfg] = errs[0]
    return errors


def _compile_failure(case: Case, ref: Reference, cfg: KernelConfig, error: str, dtype) -> Trial:
    t = Trial(cfg, stage="build", error=error,
              repro=repro_command(ref.fmt_arg, ref.N, ref.K, case.M, cfg, case.backend, dtype))
    log.warning("autotune: %s %s failed at build: %s\n  repro: %s", case.spec.name, cfg.label, error, t.repro)
    return t


def sibling_signature(spec: FormatSpec) -> tuple:
    """What makes two formats' kernels alike enough to share tile configs: the storage family, the decode kind and
    width, the word type and the K group (gptq, int4_g128_asym, int4_g128_sym and autoround are siblings: their
    kernels differ in a zero-point offset; eqat and eqat_w4g128 likewise)."""
    return (spec.family, spec.decode.kind, spec.decode.bits, spec.packing.word_dtype if spec.packing else None,
            spec.param("group_size", spec.param("blocksize", 0)))


@functools.lru_cache(maxsize=256)
def _entry_signature(fmt: str, options: str) -> tuple | None:
    try:
        return sibling_signature(get_format(fmt, **json.loads(options)))
    except Exception:  # noqa: BLE001 (a format this version does not register: no sibling)
        return None


def seed_configs(case: Case, entries: dict, search: Search, limit: int = SEEDS) -> list[KernelConfig]:
    """Legal configs of this case's space that won (or came second) in `entries` (database key -> entry) for
    the same format (or a sibling format, see sibling_signature), backend and kernel family, nearest first:
    distance = |log2 bucket ratio| + half the |log2| ratios of N and K, + SIBLING for a sibling format, so the
    M buckets next to this one at the same shape come before other shapes, and the format's own entries before
    a sibling's at the same distance. (int4_g128_asym 8192x28672 M=1 on the H100: the descent from its own seeds
    ended at 63.6 us; its sibling gptq's winner, m1n64k128s8w2p2r128, ran it at 59.3 us.)"""
    spec_key, backend = case.spec.key, case.backend
    mine = sibling_signature(case.spec)
    scored = []
    for key, e in entries.items():
        k_spec, k_backend, n, k, bucket = key.split("|")
        if k_backend != backend or e.get("family") != case.family:
            continue
        extra = 0.0
        if k_spec != spec_key:
            if _entry_signature(e.get("format", ""), json.dumps(e.get("options") or {}, sort_keys=True)) != mine:
                continue
            extra = SIBLING
        dist = extra + abs(math.log2(int(bucket) / case.bucket)) + 0.5 * (abs(math.log2(int(n) / case.N))
                                                                          + abs(math.log2(int(k) / case.K)))
        for rank, item in enumerate((e, e.get("runner_up") or {})):
            try:
                cfg = KernelConfig(**item["config"])
            except (KeyError, TypeError, ValueError):
                continue
            scored.append((dist, extra > 0, rank, cfg))
    out = []
    for *_, cfg in sorted(scored, key=lambda t: t[:3]):
        if cfg not in out and search.legal(cfg):
            out.append(cfg)
        if len(out) == limit:
            break
    return out


def tune_case(case: Case, ref: Reference, *, arch: str, budget_s: float, timer: Timer,
              dtype: torch.dtype = torch.float16, jobs: int = 8, max_candidates: int | None = None,
              pool: CompilePool | None = None, seeds: list[KernelConfig] = (), known: dict | None = None,
              patience: int | None = None) -> CaseResult:
    """Search, verify and time one case within about `budget_s` seconds, the finalists' re-timing included.

    The default goes first, then `seeds` (the caller's; those outside the case's space are skipped and logged),
    then the seed_configs of `known` (database entries), then the descent. Candidates go in chunks of up to `jobs`
    (FIRST_CHUNK at first): compiled ahead of time in `pool` (without one, the JIT compiles each in
    evaluate()), then each verified and screened. No chunk starts after the search deadline, and chunks
    shrink to what the measured seconds per candidate leave room for, so a case overruns its budget by about
    one chunk's compile at most. With `patience`, the search also ends once that many candidates in a row
    (counted at chunk ends) brought no improvement of more than IMPROVE."""
    t0 = time.perf_counter()
    deadline = t0 + budget_s * (1 - FINAL_RESERVE)
    res = CaseResult(case)
    search = Search(case.spec, get_arch(arch), case.M, case.N, case.K, case.backend, case.family)
    dflt = default_config(case.spec, (case.M, case.N, case.K), arch)
    given = []
    for c in seeds:   # the caller's configs (sweep --try): those outside this case's space are skipped, said why
        why = None if search.legal(c) else search.reason(c)
        if why:
            log.info("autotune: %s skipped for %s: %s", c.label, case.label, why)
        else:
            given.append(c)
    seeds = list(dict.fromkeys([*given, *(seed_configs(case, known, search) if known else [])]))
    seeds = [c for c in seeds if c != dflt]
    incumbent = _incumbent(case, known or {}, search)
    search.mark([dflt, *seeds])
    center, queue = dflt, [dflt, *seeds] + search.lines(dflt)
    seed, per_candidate = 0, None
    best_us, since_best = math.inf, 0
    while True:
        if patience and since_best >= patience:
            break
        if not queue:
            # the best's lines are exhausted: explore around the next best, then around the failed ones
            # (legal configs that failed here, e.g. when the default itself is outside the space)
            for t in _ranked(res.trials.values())[1:] + [t for t in res.trials.values() if not t.ok]:
                queue = search.lines(t.config)
                if queue:
                    break
            if not queue:
                break
        remaining = deadline - time.perf_counter()
        n = min(jobs, FIRST_CHUNK) if per_candidate is None else max(1, min(jobs, int(remaining / per_candidate)))
        if remaining <= 0:
            n = 0 if res.trials else 1   # the default (first in the queue) is measured whatever the budget
        if max_candidates:
            n = min(n, max_candidates - len(res.trials))
        if n <= 0:
            res.stopped_by_budget = True
            break
        chunk, queue = queue[:n], queue[n:]
        started = time.perf_counter()
        modules = {}
        for cfg in chunk:
            try:
                modules[cfg] = build_module(case.spec, case.M, case.N, case.K, arch, cfg, case.family)
            except Exception:  # noqa: BLE001 (evaluate() below scores and logs it)
                pass
        failed = _precompile(pool, ref, case, modules, dtype)
        for cfg in chunk:
            seed += 1
            if cfg in failed:
                res.trials[cfg] = _compile_failure(case, ref, cfg, failed[cfg], dtype)
                continue
            res.trials[cfg] = evaluate(ref, case.M, cfg, arch=arch, family=case.family, dtype=dtype,
                                       timer=timer, rep_ms=SCREEN_REP_MS, seed=seed, backend=case.backend,
                                       module=modules.get(cfg))
        per_candidate = (time.perf_counter() - started) / len(chunk)
        for cfg in chunk:
            us = res.trials[cfg].us
            if us < best_us * (1 - IMPROVE):
                since_best = 0
            else:
                since_best += 1
            best_us = min(best_us, us)
        ranked = _ranked(res.trials.values())
        if ranked and ranked[0].config != center:   # move to the new best; its lines go first
            center = ranked[0].config
            queue = search.lines(center) + queue
    _finalize(res, ref, arch, dflt, dtype, timer, seed, incumbent)
    res.seconds = time.perf_counter() - t0
    return res


def _incumbent(case: Case, known: dict, search: Search) -> KernelConfig | None:
    """The config the database holds for this very case (a stale or template-changed entry's too), if the case's
    space still holds it: it is re-timed among the finalists, so a screening measurement that ranked it low by
    noise cannot replace it with a slower winner (H100, int4 28672x8192 M=1: screened out at 5 ms windows, the
    re-tune took a tile 4% slower than the incumbent in the same call's probe)."""
    e = known.get(entry_key(case.spec.key, case.backend, case.N, case.K, case.bucket))
    try:
        cfg = KernelConfig(**e["config"])
    except (KeyError, TypeError, ValueError):
        return None
    return cfg if search.legal(cfg) else None


def _finalize(res: CaseResult, ref: Reference, arch: str, dflt: KernelConfig, dtype, timer, seed: int,
              incumbent: KernelConfig | None = None) -> None:
    case = res.case
    finalists = [t.config for t in _ranked(res.trials.values())[:2]]
    if dflt not in finalists:
        finalists.append(dflt)
    held = res.trials.get(incumbent) if incumbent is not None else None
    if held is not None and held.ok and incumbent not in finalists:
        finalists.append(incumbent)
    final = []
    for i, cfg in enumerate(finalists):
        t = evaluate(ref, case.M, cfg, arch=arch, family=case.family, dtype=dtype, timer=timer,
                     rep_ms=FINAL_REP_MS, seed=seed + 1 + i, backend=case.backend)
        final.append(t)
        if cfg == dflt:
            res.default = t
    ranked = _ranked(final)
    res.winner = ranked[0] if ranked else None
    res.runner_up = ranked[1] if len(ranked) > 1 else None


def progress_line(i: int, n: int, res: CaseResult, started: float) -> str:
    """One plain-text status line for case i of n (1-based)."""
    c = res.case
    elapsed = time.perf_counter() - started
    eta = elapsed / i * (n - i) if i else 0.0
    w = res.winner
    best = f"{w.config.label} {w.us:.1f} us" if w else "no working config"
    d = res.default
    dflt = f"default {d.us:.1f} us" if d and d.ok else "default failed"
    bar = "#" * round(20 * i / n)
    return (f"[{bar:<20}] {i}/{n} {c.label}: {len(res.trials)} tried, {res.failed} failed, {best} ({dflt}), "
            f"{res.seconds:.1f} s{' (budget)' if res.stopped_by_budget else ''}; elapsed {elapsed:.0f} s, "
            f"eta {eta:.0f} s")


def result_table(rows: list[CaseResult]) -> str:
    head = ("format", "N", "K", "M bucket", "winner", "us", "runner-up", "us", "default us", "speedup", "tried", "s")
    lines = []
    for r in rows:
        c, w, u, d = r.case, r.winner, r.runner_up, r.default
        lines.append((c.fmt_arg, str(c.N), str(c.K), ">256" if c.bucket == 512 else str(c.bucket),
                      w.config.label if w else "-", f"{w.us:.2f}" if w else "inf",
                      u.config.label if u else "-", f"{u.us:.2f}" if u else "-",
                      f"{d.us:.2f}" if d and d.ok else "inf", f"{r.speedup:.2f}x" if r.speedup == r.speedup else "-",
                      str(len(r.trials)), f"{r.seconds:.1f}"))
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    fmt = lambda row: "  ".join(v.ljust(widths[i]) if i in (0, 4, 6) else v.rjust(widths[i])  # noqa: E731
                                for i, v in enumerate(row))
    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths))] + [fmt(x) for x in lines])


def summary(rows: list[CaseResult], wall_s: float) -> str:
    tuned = [r for r in rows if r.winner is not None]
    sp = [r.speedup for r in tuned if r.speedup == r.speedup]
    geo = math.exp(sum(math.log(s) for s in sp) / len(sp)) if sp else math.nan
    avg = sum(r.seconds for r in rows) / len(rows) if rows else 0.0
    return (f"{len(tuned)}/{len(rows)} cases tuned in {wall_s:.0f} s wall ({avg:.1f} s per case searching, "
            f"preparation excluded); winner vs heuristic default: geometric mean {geo:.3f}x, "
            f"best {max(sp, default=math.nan):.2f}x, worst {min(sp, default=math.nan):.2f}x")


def entry_for(res: CaseResult, header: dict, options: dict) -> dict:
    c, w, u, d = res.case, res.winner, res.runner_up, res.default
    return make_entry(c.spec.name, options, w.config, w.us, (u.config, u.us) if u else None, header,
                      M=c.M, family=c.family, default={"config": d.config.to_dict(), "us": d.us if d.ok else None},
                      tried=len(res.trials), failed=res.failed, tuning_s=round(res.seconds, 2),
                      kernel_hash=tuned_kernel_hash(c.spec, c.bucket, c.N, c.K, w.config, header["arch"]))


def same_kernel(entry: dict, c: Case, arch: str) -> bool:
    """The entry timed the kernel the current templates render for case c with the entry's config."""
    try:
        cfg = KernelConfig(**entry["config"])
    except (TypeError, ValueError):
        return False
    return entry_matches_kernel(entry, c.spec, c.bucket, c.N, c.K, cfg, arch)


def untuned(cases: list[Case], data: dict, header: dict) -> list[Case]:
    """The cases that the database `data` (a loaded file) has no usable entry for: none, a stale one (other
    soft versions than `header`), or one that timed a kernel the current templates no longer render."""
    todo = []
    for c in cases:
        e = data["entries"].get(entry_key(c.spec.key, c.backend, c.N, c.K, c.bucket))
        if e is None or is_stale(e, data["header"], header) or not same_kernel(e, c, header["arch"]):
            todo.append(c)
    return todo


def run_sweep(cases: list[Case], *, header: dict, path: Path, device: str, timer: Timer, budget_s: float,
              options: dict, jobs: int = 8, fresh: bool = False, force: bool = False, max_candidates=None,
              dtype: torch.dtype = torch.float16, patience: int | None = None, seeds: bool = True,
              tries: tuple[KernelConfig, ...] = (), out=print) -> list[CaseResult]:
    """Tune every case that the database at `path` lacks (or holds stale, or all with `force`), writing
    each winner as soon as it is known. `options[fmt_arg]` are the format's non-default options. With
    `seeds`, each case starts from the current entries of this machine nearest to it (seed_configs); `tries`
    are measured first in every case whose search space holds them (e.g. a config found with bench.probe)."""
    existing = None if fresh else load_for_write(path, header)   # refuses a corrupt or foreign file up front
    entries = existing["entries"] if existing else {}
    todo = cases if force or existing is None else untuned(cases, existing, header)
    out(f"{len(cases)} cases, {len(cases) - len(todo)} already tuned for this machine in {path}, "
        f"{len(todo)} to tune (budget {budget_s:g} s each)")
    # ahead-of-time compilation needs real @triton.jit kernels and a GPU target (not the interpreter)
    aot = todo and jobs > 1 and device == "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1"
    with CompilePool(jobs) if aot else contextlib.nullcontext() as pool:
        known = {k: e for k, e in entries.items() if not is_stale(e, existing["header"], header)} if seeds else None
        return _sweep_cases(todo, pool, header=header, path=path, device=device, timer=timer, budget_s=budget_s,
                            options=options, jobs=jobs, fresh=fresh, max_candidates=max_candidates, dtype=dtype,
                            patience=patience, known=known, tries=tries, out=out)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT, e.g. `timeout -s INT`) during a sweep: `rows` are the cases finished (and saved) before it."""

    def __init__(self, rows: list[CaseResult], total: int):
        super().__init__(f"interrupted after {len(rows)} of {total} cases")
        self.rows, self.total = rows, total


def _sweep_cases(todo: list[Case], pool, *, header, path, device, timer, budget_s, options, jobs, fresh,
                 max_candidates, dtype, patience, known, out, tries=()) -> list[CaseResult]:
    """`known`: entries to seed from (None: no seeds), grown with every winner of this sweep. An interrupt
    raises SweepInterrupted with the finished cases (each winner is already written when its case ends)."""
    arch = header["arch"]
    rows, refs, started, replace_file = [], {}, time.perf_counter(), fresh
    try:
        for i, c in enumerate(todo, 1):
            rk = (c.spec.key, c.N, c.K)
            if rk not in refs:
                refs.clear()  # one problem's weights at a time on the device
                t = time.perf_counter()
                refs[rk] = Reference.build(c.spec, c.fmt_arg, c.N, c.K, device, seed=c.N + c.K)
                out(f"  prepared {c.fmt_arg} {c.N}x{c.K} (synthetic weights, reference decode) in "
                    f"{time.perf_counter() - t:.1f} s")
            res = tune_case(c, refs[rk], arch=arch, budget_s=budget_s, timer=timer, dtype=dtype, jobs=jobs,
                            max_candidates=max_candidates, pool=pool, seeds=tries, known=known, patience=patience)
            rows.append(res)
            if res.winner is not None:
                key = entry_key(c.spec.key, c.backend, c.N, c.K, c.bucket)
                entry = entry_for(res, header, options.get(c.fmt_arg, {}))
                merge_entries(path, header, {key: entry}, fresh=replace_file)
                replace_file = False
                if known is not None:
                    known[key] = entry
            out(progress_line(i, len(todo), res, started))
    except KeyboardInterrupt:
        raise SweepInterrupted(rows, len(todo)) from None
    return rows
