"""Ahead-of-time compilation of a chunk of candidates in a process pool, into the cache entries the JIT hits.

A sweep used to JIT-compile ~20-80 candidates one by one per case (a thread pool did not help: triton's
front end holds the GIL). Here, per chunk:

1. capture (the timing process, `capture`): each candidate module's run() is called once on the real
   arguments with `triton.knobs.runtime.jit_cache_hook` set. The JIT binds the arguments exactly as for
   a launch (dtypes, 16-byte alignment of the device pointers, ints equal to 1 or divisible by 16,
   constexprs, num_warps / num_stages and the other options) and hands the hook `specialization_data`,
   the JSON its own `JITFunction.preload` reads back. The hook returns True: nothing compiles and
   nothing launches (a kernel the process has already compiled does launch, as it would in a warm-up).
2. compile (`CompilePool`, spawned workers, no CUDA context): a worker imports the same kernel file,
   installs `OfflineDriver` (reports the timing process's GPUTarget; launches nothing) and calls
   `jit_fn.preload(specialization_data)`: the JIT's `_do_compile`, i.e. `triton.compile(ASTSource(fn,
   signature, constexprs, attrs), target, options)`, which writes `<TRITON_CACHE_DIR>/<hash>/`. The
   workers use the timing process's cache folder.
3. time (the timing process, verify.evaluate): the JIT computes the same inputs, hence the same
   `get_cache_key` (fn.cache_key = source, first line and dependencies, not the module name; attrs,
   signature, constexprs; the backend's target and ptxas version; options; cache-invalidating env
   vars), finds the cubin on disk and only loads it.

The one edit to Triton's data: `preload` checks that the JSON's kernel name equals the function's
`module.qualname`, and generated modules get a per-process module name (runtime.loader); the name is
not part of any key, so the worker substitutes its own. tests/test_autotune_aot.py compiles in a
worker and checks that the JIT then reports a cache hit with the same hash, on a CPU (fake sm90 target).
"""
from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

log = logging.getLogger("quantcc.autotune")


@dataclass(frozen=True)
class CompileJob:
    """One kernel specialization to compile: where its @triton.jit function lives and the JIT's data."""

    module: str            # the function's __module__ (generated modules: quantcc_generated.<stem>_<hash>)
    path: str              # its source file
    qualname: str
    specialization: str    # JSON: triton.runtime.jit.serialize_specialization_data


class OfflineDriver:
    """The part of a triton driver that JITFunction.preload / _do_compile use, for a process that compiles
    for `target` but never launches (no GPU needed)."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self):
        return self.target


def _preload_source_hash(jit_fn, specialization: str) -> str:
    """ASTSource hash of what JITFunction.preload rebuilds from `specialization` (its decoding, triton 3.6)."""
    import triton.language as tl
    from triton.compiler import ASTSource
    from triton.runtime.jit import convert_to_tuple_if_list

    d = json.loads(specialization)
    constexprs = {tuple(k): tl.dtype(v) if tl.dtype.is_dtype(v) else
                  tl.constexpr(v["constexpr"]) if isinstance(v, dict) and "constexpr" in v else v
                  for k, v in zip(d["constant_keys"], d["constant_vals"])}
    attrs = dict(zip(map(tuple, d["attrs_keys"]), d["attrs_vals"]))
    signature = {k: convert_to_tuple_if_list(v) for k, v in d["signature"].items()}
    return ASTSource(jit_fn, signature, constexprs, attrs).hash()


def capture(call) -> list[CompileJob]:
    """Run `call()` (a module's run on the real arguments) with compilation intercepted; the jobs that
    would have compiled, in call order. Exceptions of `call` propagate (the caller decides).

    Each job is checked to survive the JSON round trip: the source hash preload will rebuild must equal
    the one the JIT would compile (a constexpr JSON cannot carry exactly, say, would change it). A job
    that does not is left out: the JIT compiles it in the timing process, as without a pool."""
    from triton import knobs
    from triton.compiler import ASTSource

    jobs: list[CompileJob] = []

    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):  # noqa: A002 (triton's names)
        jit_fn = fn.jit_function
        data = compile["specialization_data"]
        jit_hash = ASTSource(jit_fn, compile["signature"], compile["constants"], compile["configs"][0]).hash()
        if _preload_source_hash(jit_fn, data) != jit_hash:
            log.warning("autotune: %s does not survive preload's JSON round trip; the JIT compiles it",
                        jit_fn.fn.__qualname__)
            return False  # compile here, as without a pool
        jobs.append(CompileJob(jit_fn.module, jit_fn.fn.__code__.co_filename, jit_fn.fn.__qualname__, data))
        return True   # skip compiling (and launching) here

    old = knobs.runtime.jit_cache_hook
    knobs.runtime.jit_cache_hook = hook
    try:
        call()
    finally:
        knobs.runtime.jit_cache_hook = old
    return jobs


def _init_worker(target: tuple, cache_dir: str) -> None:
    # Ctrl-C (or `timeout -s INT`) reaches the whole process group: the workers leave it to the sweep, which
    # stops them (CompilePool.__exit__) after writing what it has
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TRITON_INTERPRET"] = "0"   # before any kernel module is imported: real @triton.jit functions
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    knobs.cache.dir = cache_dir
    driver.set_active(OfflineDriver(GPUTarget(*target)))


def _jit_function(job: CompileJob):
    if job.module.startswith("quantcc_generated."):
        from runtime.loader import load_kernel_module
        mod = load_kernel_module(job.path)
    else:
        mod = importlib.import_module(job.module)
    obj = mod
    for part in job.qualname.split("."):
        obj = getattr(obj, part)
    return obj


def compile_job(job: CompileJob) -> tuple[str | None, str | None, float]:
    """(cache hash, None) or (None, one-line error), and the seconds it took; runs in a worker."""
    t = time.perf_counter()
    try:
        fn = _jit_function(job)
        data = json.loads(job.specialization)
        data["name"] = fn._fn_name   # this process's module name for the same file (checked, never hashed)
        kernel = fn.preload(json.dumps(data))
        return kernel.hash, None, time.perf_counter() - t
    except Exception as e:  # the candidate is scored as a build failure with this message
        msg = " ".join(str(e).split())[:300]
        return None, f"{type(e).__name__}: {msg}", time.perf_counter() - t


def current_target() -> tuple:
    """(backend, arch, warp_size) of this process's triton driver (the GPU the sweep times on)."""
    from triton.runtime.driver import driver
    t = driver.active.get_current_target()
    return (t.backend, t.arch, t.warp_size)


class CompilePool:
    """`jobs` spawned worker processes compiling for `target` into this process's triton cache folder.
    Use as a context manager; the workers start on first use and live until it exits."""

    def __init__(self, jobs: int, target: tuple | None = None):
        from triton import knobs
        self.jobs = max(1, jobs)
        self.target = tuple(target) if target is not None else current_target()
        self.cache_dir = knobs.cache.dir
        self._pool = None

    def __enter__(self) -> "CompilePool":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._pool is None:
            return
        if exc_type is None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        else:   # interrupted or failed: stop the workers now instead of waiting for their compiles (an
            # interrupted H100 sweep once waited out its call's time limit here)
            procs = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                p.terminate()
            for p in procs:
                p.join(timeout=5)
        self._pool = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.target, self.cache_dir))
        return self._pool

    def compile(self, jobs: list[CompileJob]) -> list[tuple[str | None, str | None, float]]:
        """compile_job for each job, in order, `self.jobs` at a time. Identical jobs compile once. If a
        worker dies, every job of the call comes back as (None, None, 0.0): not compiled, no error known."""
        if not jobs:
            return []
        unique = list(dict.fromkeys(jobs))
        try:
            done = dict(zip(unique, self._executor().map(compile_job, unique)))
        except BrokenProcessPool as e:   # a worker died (e.g. a compiler crash): which job is unknown
            log.warning("autotune: a compile worker died (%s); this chunk compiles in the JIT, new workers "
                        "start for the next one", e)
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            return [(None, None, 0.0)] * len(jobs)
        return [done[j] for j in jobs]
