"""TVM candidates for the autotuner: built where TVM is (the CPU machine), verified and timed where the GPU is
(a machine with torch + cuda.core only).

  python -m autotune tvm-build --formats gptq --shapes 4096,4096 --batches 1 16 128 --out DIR   # TVM + nvcc
  python -m autotune sweep --backend tvm --tvm-candidates DIR                                   # on the GPU

`tvm-build` writes, per format, one artifact folder DIR/<format>_<spec key[:8]>_<arch>/ (manifest.json in the
codegen.artifacts schema, a TVMScript / CUDA C / cubin triple per candidate kernel, tvm_launcher.py) and
DIR/index.json: per (format, N, K, M bucket) case its candidate kernels (name, config, kernel hash), the
ladder configs pruned before building and why, and the builds that failed and why. A kernel takes N, K and
M at run time, so a config that is a candidate of several cases is built once and lists all of them.

The ladder (what the TVM templates expose: block_m, block_n, block_k, split_k, num_warps; num_stages,
swap_ab and maxnreg do not change a TVM kernel, they keep the centre's values): the centre is the heuristic default
(codegen.arch.default_config) fitted to the TVM schedule (codegen.tvm_backend.fit_config: exactly the kernel
`python -m codegen build --backend tvm` writes), then the centre with one axis halved or doubled: block_m
(gemm family only), block_n, block_k, split_k, num_warps, so at most 11 candidates per case (9 for gemv).
Before anything builds, a config is pruned when the lowering refuses it (codegen.plan.lower: split_k x
block_k > K, gemm tiles under 16), when the TVM schedule cannot tile it (tvm_backend.mma_schedule for gemm
configs that fit tensor cores, else tvm_backend.schedule: thread layout, at most 32 fp32 accumulators per
thread, 48 KiB static shared memory), or when its N block is wider than N (the centre's excepted). TVM or nvcc failures (e.g.
static shared memory over budget after the build) are recorded as failed builds, never as candidates.

`sweep --backend tvm` (on the GPU): per case, the reference of autotune/verify.py (synthetic stored tensors,
x @ ir.dequantize(W).T in float64), each candidate's cubin loaded through runtime/cubin.py (its kernel hash
recomputed from the folder and checked against the index), verified on fresh random data into a
NaN-prefilled output and only then timed with the Triton sweep's method (bench.timing.time_us: CUDA-graph
replay, do_bench median, L2 flushed; verify.evaluate), the two best and the centre re-timed side by side;
the winner becomes a database entry keyed (spec key, "tvm", N, K, M bucket) recording its kernel hash and
artifact name. The runtime's backend "auto" uses it only where it beat the Triton entry of the same bucket
(runtime.tvm_artifacts.choose).
"""
from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

from codegen import __version__
from codegen.arch import default_config, kernel_family
from codegen.env import template_hash
from ir import FormatSpec, KernelConfig, SpecError
from runtime.tuning import m_bucket
from runtime.tvm_artifacts import kernel_hash

INDEX = "index.json"
KERNEL_SUFFIXES = (".tvm.py", ".cu", ".cubin")   # the files codegen.tvm_backend.build_kernel writes per kernel
INDEX_SCHEMA = 1
AXES = {"gemv": ("block_n", "block_k", "split_k", "num_warps"),
        "gemm": ("block_m", "block_n", "block_k", "split_k", "num_warps")}
BOUNDS = {"block_m": (1, 128), "block_n": (16, 256), "block_k": (16, 512), "split_k": (1, 64), "num_warps": (1, 8)}
LADDER = ("centre = codegen.arch.default_config fitted by codegen.tvm_backend.fit_config; then the centre with one "
          "of block_m (gemm only), block_n, block_k, split_k, num_warps halved or doubled within "
          f"{BOUNDS}; pruned by codegen.plan.lower, the TVM mma/SIMT schedule checks and block_n > N")


class CandidateError(SpecError):
    """A candidate folder or index that cannot be used."""


# -- the ladder ---------------------------------------------------------------------------------------------
def reject_reason(spec: FormatSpec, arch: str, family: str, M: int, N: int, K: int, config: KernelConfig,
                  max_block_n: int = 0) -> str | None:
    """Why the TVM backend cannot build `config` for the problem (None: it is legal); a block_n above both
    N (rounded up to a power of two) and `max_block_n` is pruned as wider than the problem."""
    from codegen import tvm_backend as tb
    from codegen.plan import lower
    if config.block_n > max(16, 1 << (N - 1).bit_length(), max_block_n):
        return f"block_n {config.block_n} is wider than N={N}"
    try:
        plan = lower(spec, M, N, K, config, arch, family=family)
        tb.check_supported(plan)
        if not tb.uses_mma(plan, config):
            tb.schedule(plan, config)
    except SpecError as e:
        return str(e)
    return None


def centre(spec: FormatSpec, arch: str, M: int, N: int, K: int) -> KernelConfig:
    """The heuristic default as the TVM backend builds it (`codegen build --backend tvm` writes this kernel)."""
    from codegen import tvm_backend as tb
    from codegen.plan import lower
    return tb.fit_config(lower(spec, M, N, K, default_config(spec, (M, N, K), arch), arch))


def ladder(spec: FormatSpec, arch: str, M: int, N: int, K: int) -> tuple[list[KernelConfig], list[tuple[KernelConfig, str]]]:
    """(legal candidates, centre first; [(pruned config, reason)]) for one problem; see the module docstring."""
    family = kernel_family(M)
    c0 = centre(spec, arch, M, N, K)
    configs = [c0]
    for axis in AXES[family]:
        lo, hi = BOUNDS[axis]
        for v in (getattr(c0, axis) // 2, getattr(c0, axis) * 2):
            if lo <= v <= hi and replace(c0, **{axis: v}) not in configs:
                configs.append(replace(c0, **{axis: v}))
    kept, pruned = [], []
    for c in configs:
        why = reject_reason(spec, arch, family, M, N, K, c, max_block_n=c0.block_n)
        (pruned.append((c, why)) if why else kept.append(c))
    return kept, pruned


# -- building (the CPU machine) ---------------------------------------------------------------------------
def folder_name(spec: FormatSpec, arch: str) -> str:
    return f"{spec.name}_{spec.key[:8]}_{arch}"


def _build_one(spec_json: str, plan, cases: list[dict], out: str) -> dict:
    """Worker: build one candidate kernel into `out`; returns its manifest entry."""
    from codegen.tvm_backend import build_all
    [entry] = build_all(FormatSpec.from_json(spec_json), [(plan, cases)], Path(out))
    return entry


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _reusable(folder: Path, spec: FormatSpec, arch: str) -> dict[str, dict]:
    """Kernels of an earlier build of this folder that are still what the templates build (same spec, arch,
    template hash, cubin present), by name."""
    try:
        old = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    if (old.get("spec_key"), old.get("arch"), old.get("template_hash")) != (spec.key, arch, template_hash()):
        return {}
    return {k["name"]: k for k in old.get("kernels", [])
            if k.get("backend") == "tvm" and (folder / str(k.get("files", {}).get("cubin"))).is_file()}


def build_candidates(formats: list[tuple[str, FormatSpec, dict]], shapes, batches, arch: str, out: str | Path,
                     jobs: int = 1, max_candidates: int | None = None, build_one=_build_one,
                     log=print) -> dict:
    """Build the candidate kernels of every (format, shape, M bucket) and write DIR/index.json; returns the
    index. `formats` are (CLI argument, spec, options) triples; `build_one` is the worker (tests replace it)."""
    from codegen.artifacts import atomic_write
    from codegen.plan import lower
    from codegen.tvm_compat import version as tvm_version

    from .space import tuning_m
    out = Path(out)
    buckets = sorted({m_bucket(b) for b in batches})
    cases, plans = [], {}                 # plans: (folder, kernel name) -> [plan, spec, cases]
    for arg, spec, options in formats:
        for N, K in shapes:
            try:
                spec.check_shape(N, K)
            except SpecError as e:
                log(f"  skipping {arg} {N}x{K}: {e}")
                continue
            for bucket in buckets:
                M = tuning_m(bucket, batches)
                try:
                    kept, pruned = ladder(spec, arch, M, N, K)
                except SpecError as e:
                    log(f"  skipping {arg} {N}x{K} M<={bucket}: {e}")
                    continue
                kept = kept[:max_candidates] if max_candidates else kept
                case = {"format": arg, "name": spec.name, "options": options, "spec_key": spec.key, "N": N,
                        "K": K, "bucket": bucket, "M": M, "family": kernel_family(M),
                        "folder": folder_name(spec, arch), "candidates": [],
                        "pruned": [{"config": c.to_dict(), "reason": r} for c, r in pruned], "failed": []}
                for c in kept:
                    plan = lower(spec, M, N, K, c, arch)
                    slot = plans.setdefault((case["folder"], plan.name), [plan, spec, []])
                    slot[2].append({"M": M, "N": N, "K": K})
                    case["candidates"].append({"name": plan.name, "config": c.to_dict()})
                cases.append(case)
    entries: dict[tuple, dict] = {}
    errors: dict[tuple, str] = {}
    todo = []
    reuse_by_folder: dict[str, dict] = {}
    for (fname, kname), (plan, spec, kcases) in plans.items():
        reuse = reuse_by_folder.setdefault(fname, _reusable(out / fname, spec, arch))
        if kname in reuse:
            entries[(fname, kname)] = {**reuse[kname], "cases": kcases}
        else:
            todo.append((fname, kname, plan, spec, kcases))
    log(f"{len(cases)} cases, {len(plans)} distinct candidate kernels ({len(plans) - len(todo)} reused), "
        f"building {len(todo)} with {jobs} job(s) into {out}")
    t0 = time.perf_counter()
    if todo:
        for fname, *_ in todo:
            (out / fname).mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(max_workers=max(1, jobs)) if jobs > 1 else _Inline() as pool:
            futures = {(f, k): pool.submit(build_one, spec.to_json(), plan, kc, str(out / f))
                       for f, k, plan, spec, kc in todo}
            for i, (key, fut) in enumerate(futures.items(), 1):
                try:
                    entries[key] = fut.result()
                except Exception as e:  # a candidate TVM or nvcc cannot build is reported, never a candidate
                    errors[key] = _one_line(e)
                log(f"  [{i}/{len(todo)}] {key[1]}: {'FAILED ' + errors[key] if key in errors else 'built'}")
    log(f"built in {time.perf_counter() - t0:.1f} s")
    specs = {folder_name(s, arch): s for _, s, _ in formats}
    for fname, spec in specs.items():
        kernels = sorted((e for (f, _), e in entries.items() if f == fname), key=lambda e: e["name"])
        if not kernels:
            continue
        manifest = {"generator": f"quantcc {__version__}", "format": spec.name,
                    "spec": json.loads(spec.to_json()), "spec_key": spec.key, "arch": arch,
                    "template_hash": template_hash(), "kernels": kernels}
        atomic_write(out / fname / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        keep = {f for k in kernels for f in k["files"].values()}
        for p in (out / fname).iterdir():   # kernels of an earlier build that are no candidates now
            if p.name.endswith(KERNEL_SUFFIXES) and p.name not in keep:
                p.unlink()
    for case in cases:
        good = []
        for cand in case["candidates"]:
            key = (case["folder"], cand["name"])
            if key in errors:
                case["failed"].append({"config": cand["config"], "error": errors[key]})
                continue
            e = entries[key]
            good.append({**cand, "kernel_hash": kernel_hash(out / case["folder"], e),
                         "resources": e["launch"]["resources"].get("float16", {})})
        case["candidates"] = good
    index = {"schema": INDEX_SCHEMA, "kind": "quantcc-tvm-candidates", "arch": arch, "tvm": tvm_version(),
             "quantcc": __version__, "template_hash": template_hash(), "ladder": LADDER, "cases": cases}
    atomic_write(out / INDEX, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


class _Inline:
    """A one-worker stand-in for ProcessPoolExecutor (jobs=1: no process start, tests can patch the worker)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        from concurrent.futures import Future
        f = Future()
        try:
            f.set_result(fn(*args))
        except Exception as e:
            f.set_exception(e)
        return f


def folder_bytes(out: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())


# -- the index (read on the GPU machine) ------------------------------------------------------------------
def read_index(folder: str | Path) -> dict:
    """The validated index of a candidate folder; CandidateError naming the problem."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise CandidateError(f"no {INDEX} in {folder}: build the candidates on a machine with TVM and nvcc with "
                             f"`python -m autotune tvm-build --formats ... --shapes ... --batches ... --out {folder}`")
    try:
        index = json.loads(path.read_text())
    except ValueError as e:
        raise CandidateError(f"{path} is not valid JSON ({e}); rebuild it") from e
    if not isinstance(index, dict) or index.get("schema") != INDEX_SCHEMA or not isinstance(index.get("cases"), list):
        raise CandidateError(f"{path} is not a schema-{INDEX_SCHEMA} TVM candidate index; rebuild it")
    return index


def select_cases(index: dict, formats=None, shapes=None, batches=None) -> list[dict]:
    """The index's cases, filtered by CLI format arguments ("all": every one), (N, K) shapes and M values
    (their buckets)."""
    buckets = {m_bucket(b) for b in batches} if batches else None
    formats = None if formats and "all" in formats else formats
    return [c for c in index["cases"] if (not formats or c["format"] in formats or c["name"] in formats)
            and (not shapes or (c["N"], c["K"]) in {tuple(s) for s in shapes})
            and (buckets is None or c["bucket"] in buckets)]


# -- the sweep (the GPU machine) ----------------------------------------------------------------------------
class _Launch:
    """A loaded cubin with the `run(x, tensors, N, bias=None, out=None)` of a generated module (verify.evaluate)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def run(self, x, tensors, N, bias=None, out=None):
        return self.kernel(x, tensors, N, bias=bias, out=out)


def load_cubin(folder: Path, name: str):
    from runtime.cubin import load
    return _Launch(load(folder, name))


def _manifest_kernels(folder: Path) -> dict[str, dict]:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise CandidateError(f"{folder}/manifest.json cannot be read ({_one_line(e)}); rebuild the candidates") from e
    return {k["name"]: k for k in manifest.get("kernels", []) if k.get("backend") == "tvm"}


class _Candidates:
    """One case's candidate kernels in their folder: loaded once each (after checking the kernel hash), then
    verified and timed by verify.evaluate."""

    def __init__(self, c: dict, folder: Path, kernels: dict[str, dict], loader, repro: str, out):
        self.c, self.folder, self.kernels, self.loader, self.repro, self.out = c, folder, kernels, loader, repro, out
        self.mods: dict = {}

    def module(self, cand: dict):
        if cand["name"] not in self.mods:
            k = self.kernels.get(cand["name"])
            if k is None:
                raise CandidateError(f"{self.folder}/manifest.json has no kernel {cand['name']}")
            if kernel_hash(self.folder, k) != cand["kernel_hash"]:
                raise CandidateError(f"{cand['name']} in {self.folder} is not the kernel the index lists (kernel "
                                     f"hash differs); rebuild the candidates")
            self.mods[cand["name"]] = self.loader(self.folder, cand["name"])
        return self.mods[cand["name"]]

    def trial(self, cand: dict, ref, *, seed: int, rep_ms: int, **kw):
        from .verify import Trial, evaluate
        cfg = KernelConfig(**cand["config"])
        try:
            mod = self.module(cand)
        except Exception as e:  # noqa: BLE001 - scored like a compile failure: infinitely slow, with the repro
            self.out(f"  {cand['name']}: load failed: {_one_line(e)}\n  repro: {self.repro}")
            return Trial(cfg, stage="build", error=_one_line(e), repro=self.repro)
        t = evaluate(ref, self.c["M"], cfg, family=self.c["family"], rep_ms=rep_ms, seed=seed, backend="tvm",
                     module=mod, **kw)
        t.repro = self.repro
        return t


def tune_case(c: dict, spec: FormatSpec, ref, cands: _Candidates, *, arch: str, timer, dtype: torch.dtype,
              budget_s: float):
    """Screen the case's candidates (centre first; no new one after `budget_s`), then re-time the two best and
    the centre side by side; returns the sweep.CaseResult."""
    from .sweep import Case, CaseResult
    from .verify import FINAL_REP_MS, SCREEN_REP_MS
    t0 = time.perf_counter()
    res = CaseResult(Case(c["format"], spec, c["N"], c["K"], c["bucket"], c["M"], "tvm"))
    by_cfg = {KernelConfig(**cand["config"]): cand for cand in c["candidates"]}
    kw = {"arch": arch, "timer": timer, "dtype": dtype}
    seed = 0
    for cfg, cand in by_cfg.items():
        if res.trials and time.perf_counter() - t0 > budget_s:
            res.stopped_by_budget = True
            break
        seed += 1
        res.trials[cfg] = cands.trial(cand, ref, seed=seed, rep_ms=SCREEN_REP_MS, **kw)
    centre_cfg = next(iter(by_cfg))
    finalists = [t.config for t in sorted((t for t in res.trials.values() if t.ok), key=lambda t: t.us)[:2]]
    if centre_cfg not in finalists:
        finalists.append(centre_cfg)
    final = []
    for i, cfg in enumerate(finalists, seed + 1):
        final.append(cands.trial(by_cfg[cfg], ref, seed=i, rep_ms=FINAL_REP_MS, **kw))
        if cfg == centre_cfg:
            res.default = final[-1]
    good = sorted((t for t in final if t.ok), key=lambda t: t.us)
    res.winner = good[0] if good else None
    res.runner_up = good[1] if len(good) > 1 else None
    res.seconds = time.perf_counter() - t0
    return res


def sweep(index_dir: str | Path, cases: list[dict], *, header: dict, path: Path, timer, device: str = "cuda",
          dtype: torch.dtype = torch.float16, fresh: bool = False, force: bool = False, budget_s: float = 60.0,
          loader=load_cubin, out=print) -> list:
    """Verify and time every case's candidates and write the winners as backend-"tvm" entries (see the
    module docstring). A case whose entry already timed one of its candidates (same kernel hash, not stale)
    is skipped unless `force`. `loader(folder, name)` returns an object with run(x, tensors, N, out=)."""
    from ir import get_format

    from .db import entry_key, is_stale, load_for_write, make_entry, merge_entries
    from .verify import Reference
    index_dir = Path(index_dir)
    index = read_index(index_dir)
    arch = header["arch"]
    if index["arch"] != arch:
        raise CandidateError(f"the candidates in {index_dir} were built for {index['arch']}, this GPU is {arch}; "
                             f"rebuild them with `python -m autotune tvm-build --arch {arch} ...`")
    existing = None if fresh else load_for_write(path, header)
    entries = existing["entries"] if existing else {}
    todo = []
    for c in cases:
        e = entries.get(entry_key(c["spec_key"], "tvm", c["N"], c["K"], c["bucket"]))
        done = e is not None and not is_stale(e, existing["header"], header) and \
            e.get("kernel_hash") in {k["kernel_hash"] for k in c["candidates"]}
        if not done or force:
            todo.append(c)
    out(f"{len(cases)} TVM cases, {len(cases) - len(todo)} already tuned in {path}, {len(todo)} to tune")
    rows, refs, manifests, replace_file, started = [], {}, {}, fresh, time.perf_counter()
    for i, c in enumerate(todo, 1):
        if not c["candidates"]:
            why = "; ".join(sorted({p["reason"] for p in c["pruned"]} | {f["error"] for f in c["failed"]}))
            out(f"  skipping {c['format']} {c['N']}x{c['K']} M<={c['bucket']}: no TVM candidate was built ({why})")
            continue
        spec = get_format(c["name"], **c["options"])
        if spec.key != c["spec_key"]:
            out(f"  skipping {c['format']}: its definition changed since the candidates were built "
                f"(spec key {spec.key[:12]} != {c['spec_key'][:12]}); rebuild them")
            continue
        rk = (spec.key, c["N"], c["K"])
        if rk not in refs:
            refs.clear()   # one problem's weights at a time on the device
            refs[rk] = Reference.build(spec, c["format"], c["N"], c["K"], device, seed=c["N"] + c["K"])
        folder = index_dir / c["folder"]
        if c["folder"] not in manifests:
            manifests[c["folder"]] = _manifest_kernels(folder)
        repro = (f"python -m autotune sweep --backend tvm --tvm-candidates {index_dir} --formats {c['format']} "
                 f"--shapes {c['N']},{c['K']} --batches {c['M']} --force")
        cands = _Candidates(c, folder, manifests[c["folder"]], loader, repro, out)
        res = tune_case(c, spec, refs[rk], cands, arch=arch, timer=timer, dtype=dtype, budget_s=budget_s)
        rows.append(res)
        if res.winner is not None:
            w, u, d = res.winner, res.runner_up, res.default
            cand = next(k for k in c["candidates"] if KernelConfig(**k["config"]) == w.config)
            entry = make_entry(spec.name, c["options"], w.config, w.us, (u.config, u.us) if u else None, header,
                               M=c["M"], family=c["family"],
                               default={"config": d.config.to_dict(), "us": d.us if d.ok else None},
                               tried=len(res.trials), failed=res.failed, tuning_s=round(res.seconds, 2),
                               kernel_hash=cand["kernel_hash"], artifact=cand["name"],
                               artifact_folder=c["folder"], rel_err=w.rel_err)
            merge_entries(path, header, {entry_key(spec.key, "tvm", c["N"], c["K"], c["bucket"]): entry},
                          fresh=replace_file)
            replace_file = False
        best = f"{res.winner.config.label} {res.winner.us:.1f} us" if res.winner else "no working candidate"
        out(f"[{i}/{len(todo)}] {res.case.label} (tvm): {len(res.trials)} tried, {res.failed} failed, {best}, "
            f"{res.seconds:.1f} s; elapsed {time.perf_counter() - started:.0f} s")
    return rows


# -- command line (hooked into autotune/__main__.py) --------------------------------------------------------
def add_build_command(sub, shape_type) -> None:
    b = sub.add_parser("tvm-build", help="build TVM candidate kernels (needs TVM and nvcc; no GPU) for "
                                         "`sweep --backend tvm --tvm-candidates DIR` on the GPU machine")
    b.add_argument("--formats", nargs="+", required=True, metavar="FORMAT", help="formats, or `all`")
    b.add_argument("--shapes", nargs="+", type=shape_type, required=True, metavar="N,K")
    b.add_argument("--batches", nargs="+", type=int, required=True, metavar="M")
    b.add_argument("--arch", default="sm90")
    b.add_argument("--out", required=True, help="candidate folder (carry it to the GPU machine)")
    b.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel TVM + nvcc builds")
    b.add_argument("--max-candidates", type=int, default=None, help="keep the first N ladder configs per case")
    b.set_defaults(fn=cmd_build)


def cmd_build(args) -> int:
    import ir

    from .__main__ import parse_format
    names = ir.list_formats() if "all" in args.formats else args.formats
    formats = [(arg, *parse_format(arg)) for arg in names]
    index = build_candidates(formats, args.shapes, args.batches, args.arch, args.out, jobs=args.jobs,
                             max_candidates=args.max_candidates)
    n = sum(len(c["candidates"]) for c in index["cases"])
    failed = sum(len(c["failed"]) for c in index["cases"])
    print(f"{len(index['cases'])} cases, {n} candidates ({failed} failed builds), "
          f"{folder_bytes(args.out) / 2 ** 20:.1f} MiB in {args.out}")
    for c in index["cases"]:
        print(f"  {c['format']} {c['N']}x{c['K']} M<={c['bucket']}: {len(c['candidates'])} candidates, "
              f"{len(c['pruned'])} pruned, {len(c['failed'])} failed")
    return 0 if n else 1


def cmd_sweep(args) -> int:
    """`python -m autotune sweep --backend tvm --tvm-candidates DIR [--formats/--shapes/--batches filters]`."""
    import sys
    if not args.tvm_candidates:
        print("sweep --backend tvm needs --tvm-candidates DIR (built by `python -m autotune tvm-build`)",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("autotune sweep needs a CUDA GPU", file=sys.stderr)
        return 2
    from bench.timing import time_us
    from runtime.device import machine_header

    from .db import db_path
    from .sweep import result_table, summary
    header = machine_header()
    path = db_path(header["gpu"], args.db_dir)
    index = read_index(args.tvm_candidates)
    cases = select_cases(index, args.formats, args.shapes, args.batches)
    print(f"TVM candidates {args.tvm_candidates} ({index['arch']}, TVM {index['tvm']}) on {header['gpu']} into {path}")
    t0 = time.perf_counter()
    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    rows = sweep(args.tvm_candidates, cases, header=header, path=path, timer=time_us,
                 dtype=dtypes[args.dtype], fresh=args.fresh, force=args.force,
                 budget_s=args.budget_s if args.budget_s else math.inf)
    if rows:
        print()
        print(result_table(rows))
        print(summary(rows, time.perf_counter() - t0))
    return 0 if all(r.winner is not None for r in rows) else 1
