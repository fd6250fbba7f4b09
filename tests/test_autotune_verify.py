"""Verify-then-time on the CPU: generated kernels run under TRITON_INTERPRET=1 at tiny shapes, the timer is fake.
A wrong candidate never gets a time (so it can never win), a raising one scores infinity with a repro line."""
import json
import math

import pytest
import torch

import ir
from autotune import sweep, verify
from autotune.__main__ import main
from autotune.sweep import Case, tune_case
from autotune.verify import Reference, evaluate, repro_command
from ir import KernelConfig

N, K = 32, 256          # gptq needs K in whole groups of 128 and N in whole int32 words of zeros
GEMV = KernelConfig(block_m=1, block_n=32, block_k=128, split_k=2, num_warps=4, num_stages=1)


@pytest.fixture(scope="module")
def ref():
    return Reference.build(ir.get_format("gptq"), "gptq", N, K, "cpu", seed=3)


@pytest.fixture(autouse=True)
def _kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QUANTCC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernels"))


def fake_timer(fn, rep_ms):
    fn()
    return 10.0


class Wrong:
    """A module whose run() is off by 1% (or NaN in one element, or raises)."""

    KERNEL_NAME = "wrong"

    def __init__(self, inner, mode):
        self.inner, self.mode = inner, mode

    def run(self, x, tensors, N, bias=None, out=None):
        if self.mode == "raise":
            raise RuntimeError("out of resource: shared memory, Required: 300000, Hardware limit: 232448")
        y = self.inner.run(x, tensors, N, bias=bias, out=out)
        if self.mode == "scale":
            y.mul_(1.01)
        else:
            y[0, -1] = float("nan")
        return y


def test_real_kernel_passes_and_is_timed(ref):
    t = evaluate(ref, 1, GEMV, arch="sm90", family="gemv", timer=fake_timer)
    assert t.ok and t.us == 10.0 and t.rel_err < verify.REL_TOL[torch.float16] and not t.error
    t = evaluate(ref, 3, GEMV.__class__(block_m=4, block_n=16, block_k=64, num_stages=1), arch="sm90",
                 family="gemv", dtype=torch.bfloat16, timer=None)
    assert t.ok and t.rel_err < verify.REL_TOL[torch.bfloat16]


@pytest.mark.parametrize("mode, match", [("scale", "relative error .* > tolerance"), ("nan", "outputs are NaN"),
                                         ("raise", "RuntimeError: out of resource")])
def test_wrong_or_raising_candidate_scores_infinity(ref, mode, match, caplog):
    from runtime.kernels import get_kernel
    mod = Wrong(get_kernel(ref.spec, 1, N, K, "sm90", GEMV, "gemv"), mode)
    timed = []
    t = evaluate(ref, 1, GEMV, arch="sm90", family="gemv", module=mod, timer=lambda fn, r: timed.append(1) or 1.0)
    assert math.isinf(t.us) and not t.ok and t.stage == "verify" and not timed   # never timed
    assert __import__("re").search(match, t.error)
    assert t.repro.startswith("PYTHONPATH=. python -m autotune check --format gptq --shape 32,256 --batch 1")
    assert json.loads(t.repro.split("--config ")[1].strip("'")) == GEMV.to_dict()
    assert "repro: PYTHONPATH=." in caplog.text


def test_build_failure_scores_infinity(ref):
    bad = KernelConfig(block_m=16, block_n=16, block_k=8)      # lower() refuses block_k < 16 for tl.dot
    t = evaluate(ref, 16, bad, arch="sm90", family="gemm", timer=fake_timer)
    assert math.isinf(t.us) and t.stage == "build" and "SpecError" in t.error


def test_fast_wrong_kernel_never_wins(ref, monkeypatch):
    """tune_case with real (interpreted) kernels, where the candidate the fake timer calls fastest is wrong
    and another raises: the winner is a verified config, both failures count, the default is measured."""
    from runtime.kernels import get_kernel
    case = Case("gptq", ref.spec, N, K, 1, 1)
    made = {}

    def build(spec, M, n, k, arch, config, family):
        mod = get_kernel(spec, M, n, k, arch, config, family)
        made.setdefault(config, len(made))
        return {1: Wrong(mod, "scale"), 2: Wrong(mod, "raise")}.get(made[config], mod)

    def timer(fn, rep_ms):   # the deliberately wrong candidate (#1) would be by far the fastest
        fn()
        return 1.0 if timer.current == 1 else 10.0 + timer.current

    def evaluate_tracking(ref_, M, config, **kw):
        timer.current = made.get(config, -1)
        return evaluate(ref_, M, config, **kw)

    monkeypatch.setattr(sweep, "build_module", build)
    monkeypatch.setattr(verify, "build_module", build)
    monkeypatch.setattr(sweep, "evaluate", evaluate_tracking)
    res = tune_case(case, ref, arch="sm90", budget_s=600, timer=timer, max_candidates=5)
    assert len(res.trials) == 5 and res.failed == 2 and res.stopped_by_budget
    wrong = [c for c, i in made.items() if i == 1][0]
    assert res.trials[wrong].stage == "verify" and math.isinf(res.trials[wrong].us)
    assert res.winner is not None and res.winner.config != wrong and res.winner.ok
    assert res.default is not None and res.default.ok and res.speedup >= 1.0
    assert res.runner_up is not None and res.runner_up.us >= res.winner.us


def test_budget_stops_early_and_keeps_the_best(ref):
    case = Case("gptq", ref.spec, N, K, 1, 1)
    res = tune_case(case, ref, arch="sm90", budget_s=0.0, timer=fake_timer)
    assert res.stopped_by_budget and len(res.trials) == 1       # only the heuristic default was measured
    assert res.winner is not None and res.winner.config == res.default.config


def test_repro_command_runs_on_the_cpu(capsys):
    cmd = repro_command("gptq", N, K, 2, GEMV.__class__(block_m=2, block_n=16, block_k=64, num_stages=1))
    argv = cmd.split("python -m autotune ")[1].replace("'", "").split()
    assert main(argv) == 0
    assert "verified under the interpreter" in capsys.readouterr().out
