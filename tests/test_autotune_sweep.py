"""Sweep driver and command line on the CPU: case planning, resumability, stale re-tuning, `show`, refusals.
Kernels are stand-ins computing x @ W^T exactly (the interpreted kernels are covered by test_autotune_verify)."""
import json

import pytest
import torch

import ir
from autotune import sweep, verify
from autotune.__main__ import _backends, main, parse_format, plan_cases, stale_cases
from autotune.db import HeaderMismatch, db_path, entry_key, load
from autotune.sweep import result_table, run_sweep, summary

HEADER = {"gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0", "arch": "sm90", "driver": "580.65", "cuda": "13.0",
          "torch": "2.11.0+cu130", "triton": "3.6.0", "tvm": None, "quantcc": "0.1.0", "template_hash": "feedface"}
N, K = 64, 256


class Exact:
    """Stands in for a generated module: x @ W^T with the reference weights of the tensors it is given."""

    KERNEL_NAME = "exact"

    def __init__(self, weights):
        self.weights = weights

    def run(self, x, tensors, N, bias=None, out=None):
        out.copy_((x.double() @ self.weights[id(tensors)].T).to(out.dtype))
        return out


@pytest.fixture
def fake_kernels(monkeypatch):
    """Every candidate is an exact stand-in (the fake timer calls them all equal); returns the configs built."""
    built, weights = [], {}
    orig = verify.Reference.build.__func__

    def build_ref(cls, spec, fmt_arg, n, k, device, seed=0, qt=None):
        r = orig(cls, spec, fmt_arg, n, k, device, seed, qt)
        weights[id(r.tensors)] = r.W64
        return r

    def build(spec, M, n, k, arch, config, family):
        built.append(config)
        return Exact(weights)

    monkeypatch.setattr(verify.Reference, "build", classmethod(build_ref))
    monkeypatch.setattr(sweep, "build_module", build)
    monkeypatch.setattr(verify, "build_module", build)
    return built


def timer(fn, rep_ms):
    fn()
    return 100.0


def _sweep(path, header=HEADER, **kw):
    cases, options = plan_cases(["gptq", "bnb_nf4"], [(N, K)], [1, 16], ["triton"], out=lambda m: None)
    lines = []
    rows = run_sweep(cases, header=header, path=path, device="cpu", timer=timer, budget_s=60, options=options,
                     max_candidates=3, out=lines.append, **kw)
    return rows, lines


def test_plan_cases_and_format_arguments():
    notes = []
    cases, options = plan_cases(["gptq", "gptq:bits=3,group_size=64", "gguf_q4_k"], [(4096, 4096), (64, 96)],
                                [1, 3, 4, 16, 300], ["triton"], out=notes.append)
    assert options == {"gptq": {}, "gptq:bits=3,group_size=64": {"bits": 3, "group_size": 64}, "gguf_q4_k": {}}
    by_fmt = {}
    for c in cases:
        by_fmt.setdefault(c.fmt_arg, set()).add((c.N, c.K, c.bucket, c.M))
    # buckets deduplicated (3 and 4 share one), the bucket above 256 tuned at the largest requested M
    assert by_fmt["gptq"] == {(4096, 4096, b, m) for b, m in ((1, 1), (4, 4), (16, 16), (512, 300))}
    assert len(notes) == 3 and all("skipping" in n and "64x96" in n for n in notes)  # K=96 fits no group
    spec, opts = parse_format("gptq:bits=3,group_size=64,sym=true")
    assert opts == {"bits": 3, "group_size": 64, "sym": True} and spec.key != ir.get_format("gptq").key
    with pytest.raises(ir.SpecError, match="malformed"):
        parse_format("gptq:bits")
    with pytest.raises(ir.SpecError, match="cannot be tuned yet"):
        _backends("tvm")
    assert _backends("all") == ["triton"]


def test_sweep_writes_resumes_and_retunes_stale(tmp_path, fake_kernels):
    path = db_path(HEADER["gpu"], tmp_path)
    rows, lines = _sweep(path)
    assert len(rows) == 4 and all(r.winner is not None for r in rows)
    assert "4 to tune" in lines[0] and any(line.startswith("[") and "4/4" in line for line in lines)
    entries = load(path)["entries"]
    assert len(entries) == 4
    for e in entries.values():
        assert e["tried"] == 3 and e["default"]["us"] == 100.0 and e["us"] == 100.0 and e["family"] in ("gemv", "gemm")
    # every config that reached the build step is legal (the heuristic default aside)
    from autotune.prune import reject_reason
    from codegen.arch import default_config, get_arch, kernel_family
    for r in rows:
        c = r.case
        dflt = default_config(c.spec, (c.M, N, K), "sm90")
        for cfg in r.trials:
            assert cfg == dflt or reject_reason(c.spec, get_arch("sm90"), kernel_family(c.M), c.M, N, K, cfg) is None
    table = result_table(rows)
    assert "runner-up" in table and "bnb_nf4" in table and "1.00x" in table
    assert "4/4 cases tuned" in summary(rows, 1.0)

    # resumable: nothing left to do for this machine
    n_built = len(fake_kernels)
    rows, lines = _sweep(path)
    assert rows == [] and "4 already tuned" in lines[0] and len(fake_kernels) == n_built

    # a newer triton: entries are stale, the requested ones are re-tuned, and --retune-stale finds the rest
    newer = dict(HEADER, triton="3.7.0")
    assert len(stale_cases(path, newer, out=lambda m: None)[0]) == 4
    cases, options = plan_cases(["gptq"], [(N, K)], [1, 16], ["triton"])
    run_sweep(cases, header=newer, path=path, device="cpu", timer=timer, budget_s=60, options=options,
              max_candidates=2, out=lambda m: None)
    data = load(path)
    assert data["header"]["triton"] == "3.6.0"        # bnb_nf4 entries are still from 3.6.0
    stale, _ = stale_cases(path, newer, out=lambda m: None)
    assert sorted((c.fmt_arg, c.bucket) for c in stale) == [("bnb_nf4", 1), ("bnb_nf4", 16)]

    # a template edit that changes one entry's kernel: only that entry is re-tuned (the others still match)
    _sweep(path, header=newer)  # first bring every entry to this machine's versions
    data = json.loads(path.read_text())
    changed = sorted(data["entries"])[0]
    data["entries"][changed]["kernel_hash"] = "0ddba11"
    path.write_text(json.dumps(data))
    rows, lines = _sweep(path, header=newer)
    assert len(rows) == 1 and entry_key(rows[0].case.spec.key, "triton", N, K, rows[0].case.bucket) == changed
    assert load(path)["entries"][changed]["kernel_hash"] != "0ddba11"

    # another GPU: refused before anything is tuned, unless --fresh
    other = dict(HEADER, gpu=HEADER["gpu"] + " ")
    n_built = len(fake_kernels)
    with pytest.raises(HeaderMismatch, match="--fresh"):
        _sweep(path, header=other)
    assert len(fake_kernels) == n_built
    rows, _ = _sweep(path, header=other, fresh=True)
    assert len(rows) == 4 and load(path)["header"]["gpu"] == other["gpu"]


def test_an_interrupted_sweep_keeps_the_finished_cases_and_resumes(tmp_path, fake_kernels):
    """Ctrl-C in the third case: the two finished winners are saved and reported (SweepInterrupted.rows), and the
    same sweep again tunes only the two cases left."""
    progress = []   # the sweep's per-case progress lines

    def interrupting(fn, rep_ms):
        if len(progress) == 2:   # two cases done: the first timing of the third one
            raise KeyboardInterrupt
        return timer(fn, rep_ms)

    path = db_path(HEADER["gpu"], tmp_path)
    cases, options = plan_cases(["gptq", "bnb_nf4"], [(N, K)], [1, 16], ["triton"], out=lambda m: None)
    with pytest.raises(sweep.SweepInterrupted, match="after 2 of 4 cases") as stop:
        run_sweep(cases, header=HEADER, path=path, device="cpu", timer=interrupting, budget_s=60, options=options,
                  max_candidates=3, out=lambda m: progress.append(m) if m.startswith("[") else None)
    assert [r.case for r in stop.value.rows] == cases[:2] and len(load(path)["entries"]) == 2
    rows, lines = _sweep(path)
    assert "2 already tuned" in lines[0] and [r.case for r in rows] == cases[2:]


def test_interrupt_once_raises_on_the_first_sigint_and_ignores_the_rest():
    """GNU `timeout -s INT` signals the sweep and then its process group: the first SIGINT stops the sweep, a second
    one must not land in the compile pool's shutdown (it did, with a traceback); the handler is restored after."""
    import os
    import signal
    import time

    from autotune.__main__ import interrupt_once
    before = signal.getsignal(signal.SIGINT)
    with interrupt_once():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        os.kill(os.getpid(), signal.SIGINT)   # ignored
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before


def test_cli_show_and_refusals(tmp_path, fake_kernels, capsys):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only behaviour")
    assert main(["sweep", "--formats", "gptq", "--shapes", "64,256", "--batches", "1"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    path = db_path(HEADER["gpu"], tmp_path)
    _sweep(path)
    assert main(["show", "--db-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "nvidia_h100_80gb_hbm3.json: 4 entries" in out and "template_hash=feedface" in out
    assert out.count("gptq ") >= 2 and "bnb_nf4" in out
    assert out.count(" same") == 4 and "changed" not in out
    # plan --gpu leaves out what the database holds for the current kernels
    assert main(["plan", "--formats", "gptq", "bnb_nf4", "--shapes", "64,256", "--batches", "1", "16", "32",
                 "--gpu", HEADER["gpu"], "--db-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 of 6 cases already tuned for the current kernels" in out and out.count("    32    gemm       2") == 1
    data = json.loads(path.read_text())
    next(iter(data["entries"].values()))["kernel_hash"] = "0" * 16   # as if a template edit changed that kernel
    path.write_text(json.dumps(data))
    assert main(["show", "--db-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 of 4 entries timed a kernel the current templates no longer generate" in out
    assert out.count(" same") == 3 and out.count(" changed") == 2
    assert main(["show", "--db-dir", str(tmp_path), "--gpu", "NVIDIA H100 80GB HBM3"]) == 0
    capsys.readouterr()
    assert main(["show", "--db-dir", str(tmp_path), "--gpu", "NVIDIA A100-SXM4-80GB"]) == 1
    assert "no tuning database" in capsys.readouterr().out
    path.write_text("{broken")
    assert main(["show", "--db-dir", str(tmp_path)]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["space", "--format", "gguf_q4_0", "--shape", "4096,4096", "--batch", "16"]) == 0
    assert "legal of" in capsys.readouterr().out


def test_plan_counts_cases_and_estimates_device_time(capsys):
    cases, _ = plan_cases(["all"], [(4096, 4096)], [1, 16], ["triton"], out=lambda m: None)
    # `all`: every registered format, once per spec (aliases such as aqlm = aqlm_1x16 are tuned once)
    specs = {ir.get_format(n).key: n for n in reversed(ir.list_formats())}
    assert {c.fmt_arg for c in cases} == set(specs.values()) and len(cases) == 2 * len(specs)
    assert main(["plan", "--formats", "all", "gptq", "--shapes", "4096,4096", "--batches", "1", "16",
                 "--per-candidate-s", "0.1", "--candidates-per-case", "10", "--prepare-s", "0"]) == 0
    out = capsys.readouterr().out
    assert f"{len(cases)} cases" in out and "total:" in out
    # 10 candidates x 0.1 s + 3 finalists x 0.2 s per case (the first ring is at most 10 here)
    from autotune.__main__ import plan_estimate
    rows = plan_estimate(cases[:4], "sm90", per_candidate_s=0.1, candidates_per_case=10, budget_s=15, prepare_s=0)
    assert all(r["ring"] >= 1 and r["seconds"] == pytest.approx(max(r["ring"], 10) * 0.1 + 0.6) for r in rows)
    capped = plan_estimate(cases[:4], "sm90", per_candidate_s=10, candidates_per_case=10, budget_s=15, prepare_s=0)
    assert all(r["seconds"] == pytest.approx(15 * (1 - sweep.FINAL_RESERVE) + 0.6) for r in capped)


def test_compile_failures_in_the_pool_are_scored_without_recompiling(fake_kernels, monkeypatch):
    """A candidate the pool failed to compile is a build failure with the worker's message and a repro line;
    it is not evaluated (the JIT would only compile it again to fail again). Screening uses the short window."""
    from autotune.aot import CompileJob
    from codegen.arch import default_config

    cases, _ = plan_cases(["gptq"], [(N, K)], [16], ["triton"], out=lambda m: None)
    case = cases[0]
    ref = verify.Reference.build(case.spec, case.fmt_arg, N, K, "cpu", seed=1)
    dflt = default_config(case.spec, (case.M, N, K), "sm90")
    monkeypatch.setattr(sweep, "capture", lambda call: [CompileJob("m", "p", "k", str(id(call)))])

    class Pool:   # fails the first job it is given: the default's (first in the first chunk)
        n = 0

        def compile(self, jobs):
            out = [(None, "CompilationError: out of resources", 0.1) if self.n + i == 0 else ("h", None, 0.1)
                   for i in range(len(jobs))]
            self.n += len(jobs)
            return out

    calls = []
    real = sweep.evaluate

    def spy(ref, M, cfg, **kw):
        calls.append((cfg, kw["rep_ms"]))
        return real(ref, M, cfg, **kw)

    monkeypatch.setattr(sweep, "evaluate", spy)
    res = sweep.tune_case(case, ref, arch="sm90", budget_s=60, timer=timer, jobs=4, max_candidates=4, pool=Pool())
    t = res.trials[dflt]
    assert t.stage == "build" and "out of resources" in t.error and "autotune check" in t.repro and not t.ok
    screened = [c for c, rep in calls if rep == sweep.SCREEN_REP_MS]
    assert dflt not in screened and len(screened) == 3
    assert {rep for _, rep in calls} == {sweep.SCREEN_REP_MS, verify.FINAL_REP_MS}


class Costed(Exact):
    """An exact stand-in that knows its config, so a timer can score configs differently."""

    last = None

    def __init__(self, weights, config):
        super().__init__(weights)
        self.config = config

    def run(self, x, tensors, N, bias=None, out=None):
        Costed.last = self.config
        return super().run(x, tensors, N, bias=bias, out=out)


def _costed(monkeypatch, fake_kernels):
    """Like fake_kernels, with Costed stand-ins; appends each built config to fake_kernels."""
    weights = {}

    def build(spec, M, n, k, arch, config, family):
        fake_kernels.append(config)
        return Costed(weights, config)
    orig = verify.Reference.build.__func__

    def build_ref(cls, spec, fmt_arg, n, k, device, seed=0, qt=None):
        r = orig(cls, spec, fmt_arg, n, k, device, seed, qt)
        weights[id(r.tensors)] = r.W64
        return r
    monkeypatch.setattr(verify.Reference, "build", classmethod(build_ref))
    monkeypatch.setattr(sweep, "build_module", build)
    monkeypatch.setattr(verify, "build_module", build)


def test_seed_configs_nearest_bucket_first_same_format_and_family_only():
    from autotune.space import Search
    from codegen.arch import get_arch
    cases, _ = plan_cases(["gptq", "bnb_nf4"], [(N, K), (2 * N, K)], [1, 2, 4, 16], ["triton"], out=lambda m: None)
    by = {(c.fmt_arg, c.N, c.bucket): c for c in cases}
    target = by[("gptq", N, 2)]
    search = Search(target.spec, get_arch("sm90"), target.M, N, K, "triton", target.family)
    legal = [c for c in _gemv_configs(target) if search.legal(c)]
    a, b, c_, d, e = legal[:5]

    def entry(case, cfg, runner=None):
        return {"format": case.fmt_arg, "family": case.family, "config": cfg.to_dict(), "us": 1.0,
                "runner_up": {"config": runner.to_dict(), "us": 2.0} if runner else None}

    def key(case):
        return entry_key(case.spec.key, "triton", case.N, case.K, case.bucket)
    entries = {
        key(by[("gptq", 2 * N, 2)]): entry(by[("gptq", 2 * N, 2)], c_),       # other shape: distance 0.5
        key(by[("gptq", N, 4)]): entry(by[("gptq", N, 4)], b),                # next bucket: distance 1
        key(by[("gptq", N, 1)]): entry(by[("gptq", N, 1)], a, runner=d),      # previous bucket: distance 1
        key(by[("gptq", N, 16)]): entry(by[("gptq", N, 16)], e),              # gemm family: never a seed
        key(by[("bnb_nf4", N, 2)]): entry(by[("bnb_nf4", N, 2)], e),          # other format: never a seed
    }
    seeds = sweep.seed_configs(target, entries, search, limit=10)
    assert seeds[0] == c_ and set(seeds[1:3]) == {a, b} and seeds[3] == d and e not in seeds
    assert sweep.seed_configs(target, entries, search, limit=2) == seeds[:2]


def test_seed_configs_take_a_sibling_formats_winners_after_the_formats_own():
    """int4_g128_asym and gptq share a kernel structure (sweep.sibling_signature): gptq's winner at the same case
    seeds int4_g128_asym, one bucket step further than int4_g128_asym's own entries; a 2-bit gptq-layout format
    (other width) and bnb (other family) never do."""
    from autotune.space import Search
    from codegen.arch import get_arch
    cases, _ = plan_cases(["int4_g128_asym", "gptq", "int2_g64_asym", "bnb_nf4"], [(N, K)], [1, 2], ["triton"],
                          out=lambda m: None)
    by = {(c.fmt_arg, c.bucket): c for c in cases}
    target = by[("int4_g128_asym", 1)]
    search = Search(target.spec, get_arch("sm90"), target.M, N, K, "triton", target.family)
    a, b, c_, d = [c for c in _gemv_configs(target) if search.legal(c)][:4]
    assert sweep.sibling_signature(by[("gptq", 1)].spec) == sweep.sibling_signature(target.spec)
    assert sweep.sibling_signature(by[("int2_g64_asym", 1)].spec) != sweep.sibling_signature(target.spec)

    def entry(case, cfg):
        return {"format": case.fmt_arg, "options": {}, "family": case.family, "config": cfg.to_dict(), "us": 1.0}

    def key(case):
        return entry_key(case.spec.key, "triton", case.N, case.K, case.bucket)
    entries = {
        key(by[("gptq", 1)]): entry(by[("gptq", 1)], a),                       # sibling, same case: distance 1
        key(by[("int4_g128_asym", 2)]): entry(by[("int4_g128_asym", 2)], b),   # own format, next bucket: 1
        key(by[("int2_g64_asym", 1)]): entry(by[("int2_g64_asym", 1)], c_),    # other width: never
        key(by[("bnb_nf4", 1)]): entry(by[("bnb_nf4", 1)], d),                 # other family: never
    }
    assert sweep.seed_configs(target, entries, search, limit=10) == [b, a]


def _gemv_configs(case):
    from autotune.space import candidates
    from codegen.arch import get_arch
    kept, _ = candidates(case.spec, get_arch("sm90"), case.M, case.N, case.K, "triton", case.family)
    return kept


def test_seeds_go_right_after_the_default_and_patience_ends_a_converged_case(fake_kernels, monkeypatch):
    from codegen.arch import default_config
    _costed(monkeypatch, fake_kernels)
    cases, _ = plan_cases(["gptq"], [(N, K)], [1], ["triton"], out=lambda m: None)
    case = cases[0]
    ref = verify.Reference.build(case.spec, case.fmt_arg, N, K, "cpu", seed=1)
    dflt = default_config(case.spec, (case.M, N, K), "sm90")
    seeds = [c for c in _gemv_configs(case) if c != dflt][-2:]
    best = seeds[1]

    def cost_timer(fn, rep_ms):   # the second seed is fastest, every other config is slower than the default
        fn()
        cfg = Costed.last
        return 50.0 if cfg == best else 100.0 if cfg == dflt else 120.0
    res = sweep.tune_case(case, ref, arch="sm90", budget_s=600, timer=cost_timer, jobs=4, seeds=seeds, patience=8)
    assert fake_kernels[:3] == [dflt, *seeds]
    assert res.winner.config == best and res.default.us == 100.0 and res.speedup == 2.0
    # 3 measured up front, then no improvement: the chunk that reaches 8 without one is the last
    assert len(res.trials) <= 3 + 8 + 4 and len(res.trials) < len(_gemv_configs(case)) / 4
    fake_kernels.clear()
    full = sweep.tune_case(case, ref, arch="sm90", budget_s=600, timer=cost_timer, jobs=4, seeds=seeds,
                           max_candidates=40)
    assert len(full.trials) == 40     # without patience the search goes on to its cap


def test_the_incumbent_is_retimed_among_the_finalists(fake_kernels, monkeypatch):
    """The database's config for the very case being re-tuned (here a template-changed entry) is re-timed with the
    finalists: a screening measurement that ranked it below two others by noise does not hand the entry to a
    slower tile."""
    from codegen.arch import default_config
    _costed(monkeypatch, fake_kernels)
    cases, _ = plan_cases(["gptq"], [(N, K)], [1], ["triton"], out=lambda m: None)
    case = cases[0]
    ref = verify.Reference.build(case.spec, case.fmt_arg, N, K, "cpu", seed=1)
    dflt = default_config(case.spec, (case.M, N, K), "sm90")
    others = [c for c in _gemv_configs(case) if c != dflt]
    held, a, b = others[-1], others[-2], others[-3]
    known = {entry_key(case.spec.key, "triton", N, K, case.bucket): {"config": json.loads(held.to_json()),
                                                                    "family": case.family, "format": "gptq"}}

    def noisy_timer(fn, rep_ms):   # screening (short windows) misranks the incumbent; the final re-timing does not
        fn()
        cfg = Costed.last
        if cfg == held:
            return 90.0 if rep_ms == sweep.SCREEN_REP_MS else 40.0
        return {a: 60.0, b: 70.0}.get(cfg, 100.0)
    res = sweep.tune_case(case, ref, arch="sm90", budget_s=600, timer=noisy_timer, jobs=4, seeds=[a, b],
                          known=known, max_candidates=12)
    assert res.winner.config == held and res.winner.us == 40.0
    res = sweep.tune_case(case, ref, arch="sm90", budget_s=600, timer=noisy_timer, jobs=4, seeds=[a, b],
                          max_candidates=12)   # no database entry: the screening's best two decide
    assert res.winner.config == a


def test_tried_configs_outside_the_space_are_skipped_with_the_reason(fake_kernels, monkeypatch, caplog):
    """sweep --try: a config the case's space holds is measured right after the default; one it does not hold (a
    gemm tile for a gemv case) is skipped and the log says why. The labels parse as the CLI parses them."""
    import logging

    from autotune.__main__ import build_parser
    from codegen.arch import default_config
    _costed(monkeypatch, fake_kernels)
    cases, _ = plan_cases(["gptq"], [(N, K)], [1], ["triton"], out=lambda m: None)
    case = cases[0]
    ref = verify.Reference.build(case.spec, case.fmt_arg, N, K, "cpu", seed=1)
    dflt = default_config(case.spec, (case.M, N, K), "sm90")
    inside = next(c for c in _gemv_configs(case) if c != dflt)
    outside = ir.KernelConfig.from_label("m16n64k64s1w4p3t")
    args = build_parser().parse_args(["sweep", "--try", inside.label, outside.label])
    assert list(args.tries) == [inside, outside]
    with caplog.at_level(logging.INFO, logger="quantcc.autotune"):
        sweep.tune_case(case, ref, arch="sm90", budget_s=600, timer=lambda fn, rep_ms: (fn(), 1.0)[1], jobs=4,
                        seeds=list(args.tries), max_candidates=3)
    assert fake_kernels[:2] == [dflt, inside] and outside not in fake_kernels
    assert "m16n64k64s1w4p3t skipped" in caplog.text and "family: gemv takes block_m <= 4" in caplog.text
    # the sweep command says up front where each --try config will run
    from autotune.__main__ import tried_summary
    text = tried_summary([inside, outside], cases, "sm90")
    assert f"--try {inside.label}: measured in 1 of 1 cases\n" in text
    assert "--try m16n64k64s1w4p3t: measured in 0 of 1 cases: family: gemv takes block_m <= 4" in text


def test_plan_calibrates_per_family_from_the_database():
    """plan's seconds per candidate and candidates per case come from the GPU's own entries (tuning_s, tried) per
    kernel family, net of the finalists' re-timing; a family with too few entries keeps the defaults."""
    from autotune.__main__ import PLAN_DEFAULTS, PLAN_FINAL_S, calibrate, plan_estimate
    entries = {f"k{i}": {"family": "gemv", "tuning_s": 3 * PLAN_FINAL_S + 2.0, "tried": 20} for i in range(25)}
    entries.update({f"g{i}": {"family": "gemm", "tuning_s": 9.0, "tried": 30} for i in range(5)})
    entries["bad"] = {"family": "gemv", "tuning_s": "?", "tried": 0}
    calib = calibrate({"entries": entries})
    assert calib == {"gemv": (pytest.approx(0.1), 20)}          # gemm: 5 entries < 20, left to the defaults
    cases, _ = plan_cases(["gptq"], [(N, K)], [1, 16], ["triton"], out=lambda m: None)
    rows = plan_estimate(cases, "sm90", per_candidate_s={"gemv": 0.1, "gemm": PLAN_DEFAULTS[0]},
                         candidates_per_case={"gemv": 20, "gemm": PLAN_DEFAULTS[1]}, budget_s=600, prepare_s=0)
    by = {r["case"].family: r for r in rows}
    assert by["gemv"]["seconds"] == pytest.approx(max(by["gemv"]["ring"], 20) * 0.1 + 3 * PLAN_FINAL_S)
    assert by["gemm"]["seconds"] == pytest.approx(max(by["gemm"]["ring"], 24) * 0.16 + 3 * PLAN_FINAL_S)
