"""pytest-benchmark view of the kernel benchmarks, for people who prefer it (GPU only):

    pytest bench/ --benchmark-autosave                                  # store a baseline
    pytest bench/ --benchmark-compare --benchmark-compare-fail=median:5%  # fail on a >5% slower median

Each case checks the kernel against the reference first, then hands pytest-benchmark one CUDA-graph replay
plus a synchronize per round (wall clock, L2 not flushed: compare these numbers only with each other);
`extra_info` carries the `bench.timing.time_us` median (L2 flushed), bytes and TB/s as `python -m bench`
reports them. The cases (FORMAT:N:K:M) come from `--bench-cases` (bench/conftest.py).

The last test is the gate's own check: `python -m bench compare` must pass an unchanged kernel and name a
deliberately slowed one (each call runs the kernel twice)."""
import json

import pytest
import torch

import ir
from ir.synthetic import synthetic_quantized

from . import run as bench_run

@pytest.mark.gpu
def test_kernel(benchmark, name, N, K, M):
    from codegen.arch import arch_of_capability
    from runtime.device import machine_header
    from runtime.kernels import get_kernel

    from .timing import capture, time_us

    spec = ir.get_format(name)
    arch = arch_of_capability(*torch.cuda.get_device_capability())
    cfg, source = bench_run.choose_config(spec, N, K, M, arch, machine_header(), "triton")
    mod = get_kernel(spec, M, N, K, arch, cfg)
    qt = synthetic_quantized(spec, N, K, seed=1)
    tensors = {k: v.cuda() for k, v in qt.tensors.items()}
    W64 = ir.dequantize(qt, device="cuda").to(torch.float64)
    x = (torch.randn(M, K, device="cuda") * 0.5).half()
    out = torch.full((M, N), float("nan"), device="cuda", dtype=torch.float16)
    mod.run(x, tensors, N, out=out)
    torch.cuda.synchronize()
    verdict = bench_run.check_output(out, bench_run.reference(spec, tensors, W64, x), x.dtype)
    assert verdict.get("status") != "FAILED", f"{name} {N}x{K} M={M}: {verdict.get('reason')}"
    del W64

    def call():
        mod.run(x, tensors, N, out=out)

    nbytes = sum(v.numel() * v.element_size() for v in tensors.values()) + 2 * M * (N + K)
    us = time_us(call)
    benchmark.extra_info.update(config=cfg.label, config_source=source, do_bench_us=us, bytes=nbytes,
                                tbps=nbytes / us / 1e6, rel_err=verdict["rel_err"])
    graph = capture(call)

    def replay():
        graph.replay()
        torch.cuda.synchronize()

    benchmark.pedantic(replay, rounds=200, iterations=1, warmup_rounds=10)


@pytest.mark.gpu
def test_compare_catches_a_slowed_kernel(tmp_path):
    from .compare import main_compare

    def bench(out, *extra):
        rc = bench_run.main(["--formats", "gptq", "--shapes", "8192,8192", "--batches", "1", "--peers", "none",
                             "--no-plots", "--out", str(tmp_path / out), *extra])
        assert rc == 0
        return str(tmp_path / out / "results.json")

    base, again, slow = bench("base"), bench("again"), bench("slow", "--slow-down", "2")
    assert main_compare([base, again, "--fail-above", "5"]) == 0
    assert main_compare([base, slow, "--fail-above", "5"]) == 1
    cases = json.loads(open(slow).read())["cases"]
    assert all(c["status"] == "ok" for c in cases)
