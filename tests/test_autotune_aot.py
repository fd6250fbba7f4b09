"""Ahead-of-time compilation for sweeps (autotune/aot.py): a kernel compiled in a pool worker is the cache entry
the JIT of the timing process then hits. Proved on the CPU with a fake sm90 target: Triton's real JIT binds the
arguments, a spawned worker compiles from the captured specialization, and the JIT's own warm-up of the same
call then reports a cache hit with the worker's hash and writes nothing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.aot import CompileJob, compile_job

ROOT = Path(__file__).resolve().parent.parent


def _child(tmp: str) -> None:
    """Runs in a fresh process (real @triton.jit functions, not the interpreter); prints a JSON report."""
    import torch
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    import ir
    from autotune.aot import CompilePool, OfflineDriver, capture
    from ir import KernelConfig
    from ir.synthetic import synthetic_quantized
    from runtime.kernels import get_kernel

    driver.set_active(OfflineDriver(GPUTarget("cuda", 90, 32)))   # the timing process's GPU, faked
    spec = ir.get_format("gptq")
    N, K = 256, 512
    qt = synthetic_quantized(spec, N, K, seed=0)
    problems = [(1, "gemv", KernelConfig(block_m=1, block_n=64, block_k=128, split_k=2, num_warps=4, num_stages=3)),
                (16, "gemm", KernelConfig(block_m=16, block_n=64, block_k=64, split_k=2, num_warps=4, num_stages=3,
                                          swap_ab=True))]
    cache = Path(tmp) / "triton"
    report = {"captured": [], "worker": [], "jit": []}
    mods, jobs = [], []
    for M, family, cfg in problems:
        mod = get_kernel(spec, M, N, K, "sm90", cfg, family)
        x, out = torch.zeros(M, K, dtype=torch.float16), torch.empty(M, N, dtype=torch.float16)
        js = capture(lambda: mod.run(x, qt.tensors, N, out=out))
        report["captured"].append([j.qualname for j in js])
        mods.append((mod, x, out))
        jobs += js
    report["compiled_while_capturing"] = sorted(os.listdir(cache)) if cache.exists() else []
    with CompilePool(1, ("cuda", 90, 32)) as pool:
        report["worker"] = [[h, err] for h, err, _ in pool.compile(jobs)]
    before = sorted(os.listdir(cache))
    events = []
    knobs.compilation.listener = lambda **kw: events.append(kw["cache_hit"])
    for mod, x, out in mods:   # the JIT's own path for the same call, stopping short of a launch
        jit_fn = getattr(mod, mod.KERNEL_NAME)
        launched = []

        class Warmup:
            def __getitem__(self, grid):
                return lambda *a, **kw: launched.append(jit_fn.warmup(*a, grid=grid, **kw))

        setattr(mod, mod.KERNEL_NAME, Warmup())
        mod.run(x, qt.tensors, N, out=out)
        report["jit"] += [k.hash for k in launched]
    report["cache_hits"] = events
    report["new_cache_entries"] = sorted(set(os.listdir(cache)) - set(before))
    print("REPORT " + json.dumps(report))


def _every_format_child(tmp: str) -> None:
    """Capture (no compile) every registered format's gemv and gemm kernels; report jobs or the error."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    import ir
    from autotune.aot import OfflineDriver, capture
    from codegen.arch import default_config
    from ir.synthetic import synthetic_quantized
    from runtime.kernels import get_kernel

    driver.set_active(OfflineDriver(GPUTarget("cuda", 90, 32)))
    report = {}
    for name in ir.list_formats():
        spec = ir.get_format(name)
        K, N = max(spec.k_multiple, 128) * 4, max(spec.n_multiple, 16) * 4
        qt = synthetic_quantized(spec, N, K, seed=0)
        for M in (1, 16):
            try:
                mod = get_kernel(spec, M, N, K, "sm90", default_config(spec, (M, N, K), "sm90"))
                x, out = torch.zeros(M, K, dtype=torch.float16), torch.empty(M, N, dtype=torch.float16)
                report[f"{name} M={M}"] = len(capture(lambda: mod.run(x, qt.tensors, N, out=out)))
            except Exception as e:  # noqa: BLE001 (reported: a kernel the hook let compile fails to launch here)
                report[f"{name} M={M}"] = f"{type(e).__name__}: {str(e)[:200]}"
    print("REPORT " + json.dumps(report))


def _run_child(fn: str, tmp_path) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "triton"),
               QUANTCC_CACHE_DIR=str(tmp_path / "quantcc"), PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    r = subprocess.run([sys.executable, "-c", f"import sys, test_autotune_aot as t; t.{fn}(sys.argv[1])",
                        str(tmp_path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(next(line for line in r.stdout.splitlines() if line.startswith("REPORT "))[7:])


def test_every_format_survives_the_round_trip(tmp_path):
    """Every format's kernels (activation quantizers included) are captured as jobs: the source hash
    preload rebuilds from the JSON equals the JIT's, so none is left to the JIT (which, with the fake
    target here, would fail to launch)."""
    rep = _run_child("_every_format_child", tmp_path)
    bad = {k: v for k, v in rep.items() if not isinstance(v, int) or v < 1}
    assert not bad, bad
    assert rep["w8a8_static M=1"] == 2   # the x quantizer and the matmul


def test_worker_compile_is_the_entry_the_jit_hits(tmp_path):
    rep = _run_child("_child", tmp_path)
    assert [len(q) for q in rep["captured"]] == [1, 1]          # one kernel per candidate module
    assert rep["compiled_while_capturing"] == []                # capturing compiles nothing
    assert all(h and err is None for h, err in rep["worker"]), rep["worker"]
    # the JIT found exactly the worker's binaries: same cache hashes, reported as hits, nothing new written
    assert rep["jit"] == [h for h, _ in rep["worker"]]
    assert rep["cache_hits"] == [True, True]
    assert rep["new_cache_entries"] == []


def test_compile_failures_come_back_as_one_line():
    h, err, secs = compile_job(CompileJob("quantcc_no_such_module", "/nonexistent.py", "k", "{}"))
    assert h is None and err.startswith("ModuleNotFoundError: ") and "\n" not in err and secs >= 0


def test_a_dead_worker_leaves_the_chunk_to_the_jit(monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    from autotune.aot import CompilePool

    class Broken:
        def map(self, fn, jobs):
            raise BrokenProcessPool("worker exited")

        def shutdown(self, **kw):
            pass

    pool = CompilePool(2, target=("cuda", 90, 32))
    pool._pool = Broken()
    jobs = [CompileJob("m", "p", "k", "{}"), CompileJob("m", "p", "k2", "{}")]
    assert pool.compile(jobs) == [(None, None, 0.0)] * 2 and pool._pool is None


def test_an_interrupted_pool_stops_its_workers_at_once():
    """Ctrl-C during a sweep: the workers ignore SIGINT (the sweep handles it) and CompilePool.__exit__ terminates
    them instead of waiting for their compiles (an interrupted H100 sweep once waited out its call's limit)."""
    import time

    from autotune.aot import CompilePool
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), CompilePool(1, target=("cuda", 90, 32)) as pool:
        ex = pool._executor()
        assert ex.submit(time.sleep, 0).result(timeout=60) is None   # the worker is up
        ex.submit(time.sleep, 60)
        procs = list(ex._processes.values())
        raise KeyboardInterrupt
    assert time.perf_counter() - t0 < 45 and procs and not any(p.is_alive() for p in procs)
