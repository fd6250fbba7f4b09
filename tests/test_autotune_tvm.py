"""TVM candidates in the autotuner (autotune/tvm_candidates.py) and the runtime's measured choice of a TVM kernel
(runtime.tvm_artifacts.choose, runtime.tuning.lookup_tvm), on the CPU: the ladder and its pruning, the build
index (a stand-in builder writes fake cubins; one test builds real ones with TVM + nvcc), the sweep's
verify-then-time with a fake timer and stand-in kernels (a wrong fast one never wins), the database key and
entry, and the "auto" decision against the Triton entry of the same bucket with a faked GPU."""
import json
import math

import pytest
from fake_gpu import HEADER

import ir
from autotune import tvm_candidates as tc
from autotune.db import entry_key, load, make_entry, merge_entries
from codegen import tvm_backend as tb
from codegen.plan import lower
from codegen.triton_backend import tuned_kernel_hash
from ir import KernelConfig, QuantizedTensor
from runtime import tuning, tvm_artifacts, use_tvm_artifacts
from runtime.tvm_artifacts import choose, kernel_hash

N, K = 128, 512
SPEC = ir.get_format("gptq")


# -- the ladder -------------------------------------------------------------------------------------------
def test_ladder_is_the_centre_and_its_one_axis_neighbours_pruned_by_the_tvm_schedule():
    kept, pruned = tc.ladder(SPEC, "sm90", 1, 4096, 4096)
    c0 = kept[0]
    plan = lower(SPEC, 1, 4096, 4096, c0, "sm90")
    assert c0 == tb.fit_config(lower(SPEC, 1, 4096, 4096, tc.default_config(SPEC, (1, 4096, 4096), "sm90"), "sm90"))
    assert plan.family == "gemv" and len(kept) == 9 and not pruned   # 4 axes x (half, double)
    for c in kept[1:]:
        diff = [f for f in ("block_m", "block_n", "block_k", "split_k", "num_warps") if getattr(c, f) != getattr(c0, f)]
        assert len(diff) == 1 and getattr(c, diff[0]) in (getattr(c0, diff[0]) // 2, getattr(c0, diff[0]) * 2)
        assert (c.num_stages, c.swap_ab) == (c0.num_stages, c0.swap_ab)   # TVM ignores them: the centre's
        tb.schedule(lower(SPEC, 1, 4096, 4096, c, "sm90"), c)             # legal for the SIMT schedule
    kept, pruned = tc.ladder(SPEC, "sm90", 128, 4096, 4096)
    assert all(tc.reject_reason(SPEC, "sm90", "gemm", 128, 4096, 4096, c) is None for c in kept)
    reasons = [r for _, r in pruned]
    assert reasons and all("cannot be tiled by the TVM gemm schedule" in r for r in reasons)
    # a config wider than the problem, or one the lowering refuses, never builds
    small = KernelConfig(block_m=1, block_n=128, block_k=128, split_k=4, num_warps=4)
    assert tc.reject_reason(SPEC, "sm90", "gemv", 1, 64, 1024, small) == "block_n 128 is wider than N=64"
    assert tc.reject_reason(SPEC, "sm90", "gemv", 1, 64, 1024, small, max_block_n=128) is None
    assert "exceeds K=256" in tc.reject_reason(SPEC, "sm90", "gemv", 1, 128, 256, small)


# -- building, with a stand-in for TVM + nvcc ---------------------------------------------------------------
def _fake_build_one(fail: set = frozenset(), calls: list | None = None):
    def build_one(spec_json, plan, cases, out):
        if calls is not None:
            calls.append(plan.name)
        if plan.config.label in fail:
            raise RuntimeError(f"nvcc failed on {plan.name}.cu")
        files = {"cubin": f"{plan.name}.cubin", "cuda": f"{plan.name}.cu", "tvmscript": f"{plan.name}.tvm.py"}
        for f in files.values():
            (tc.Path(out) / f).write_bytes(plan.name.encode())
        launch = {k: {} for k in tvm_artifacts._LAUNCH_KEYS}
        launch.update(grid=["(N + 63) // 64", str(plan.config.split_k), "M"], block=[128, 1, 1],
                      resources={"float16": {"registers": 40, "spill_bytes": 0}})
        return {"name": plan.name, "backend": "tvm", "family": plan.family, "config": plan.config.to_dict(),
                "files": files, "launch": launch, "cases": cases}
    return build_one


def _build(out, fail=frozenset(), calls=None, shapes=((N, K), (2 * N, K)), batches=(1,), max_candidates=3):
    return tc.build_candidates([("gptq", SPEC, {})], list(shapes), list(batches), "sm90", out,
                               max_candidates=max_candidates, build_one=_fake_build_one(fail, calls), log=lambda s: None)


def test_build_index_lists_each_case_s_candidates_with_their_kernel_hash(tmp_path):
    out = tmp_path / "cand"
    shapes = [(N, K), (2 * N, K)]
    ladders = {shape: tc.ladder(SPEC, "sm90", 1, *shape)[0][:3] for shape in shapes}
    fail = ladders[shapes[0]][1]
    calls = []
    index = _build(out, fail={fail.label}, calls=calls)
    assert (index["schema"], index["kind"], index["arch"]) == (1, "quantcc-tvm-candidates", "sm90")
    assert "halved or doubled" in index["ladder"]
    folder = out / f"gptq_{SPEC.key[:8]}_sm90"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["spec_key"] == SPEC.key and manifest["arch"] == "sm90"
    kernels = {k["name"]: k for k in manifest["kernels"]}
    distinct = set(ladders[shapes[0]]) | set(ladders[shapes[1]])
    assert len(calls) == len(distinct) < 6 and len(kernels) == len(distinct) - 1   # one build per config
    for case in index["cases"]:
        kept = ladders[(case["N"], case["K"])]
        assert (case["spec_key"], case["bucket"], case["M"], case["family"]) == (SPEC.key, 1, 1, "gemv")
        assert [KernelConfig(**c["config"]) for c in case["candidates"]] == [c for c in kept if c != fail]
        assert [KernelConfig(**f["config"]) for f in case["failed"]] == [fail] and "nvcc failed" in case["failed"][0]["error"]
        for c in case["candidates"]:
            assert c["kernel_hash"] == kernel_hash(folder, kernels[c["name"]])
            assert {"N": case["N"], "K": K, "M": 1} in kernels[c["name"]]["cases"]
    # registering the folder finds every candidate, hash included
    served = {(e.name, e.kernel_hash) for e in use_tvm_artifacts(folder)}
    tvm_artifacts.clear_tvm_artifacts()
    assert served == {(c["name"], c["kernel_hash"]) for case in index["cases"] for c in case["candidates"]}
    # a rebuild reuses what is built (same spec, arch, template hash); fewer candidates drop the others' files
    calls.clear()
    _build(out, calls=calls, shapes=shapes[:1], max_candidates=1)
    assert calls == [] and [p.name for p in folder.glob("*.cubin")] == [f"{index['cases'][0]['candidates'][0]['name']}.cubin"]


def test_kernel_hash_covers_the_cubin_and_the_launch(tmp_path):
    (tmp_path / "k.cubin").write_bytes(b"abc")
    k = {"files": {"cubin": "k.cubin"}, "launch": {"grid": ["1"], "block": [128, 1, 1], "resources": {"r": 1}}}
    h = kernel_hash(tmp_path, k)
    assert h == kernel_hash(tmp_path, json.loads(json.dumps(k)))
    assert kernel_hash(tmp_path, {**k, "launch": {**k["launch"], "resources": {"r": 2}}}) == h   # ptxas report only
    assert kernel_hash(tmp_path, {**k, "launch": {**k["launch"], "grid": ["2"]}}) != h
    (tmp_path / "k.cubin").write_bytes(b"abd")
    assert kernel_hash(tmp_path, k) != h


# -- the sweep, with stand-in kernels and a fake timer ------------------------------------------------------
class _Kernel:
    """Computes x @ W^T from the stored tensors by the reference decoder (times `scale`); `us` for the timer."""

    def __init__(self, us, scale=1.0):
        self.us, self.scale = us, scale

    def run(self, x, tensors, N, bias=None, out=None):
        W = ir.dequantize(QuantizedTensor(SPEC, (N, x.shape[-1]), tensors)).double()
        out.copy_((x.double() @ W.T * self.scale).to(x.dtype))
        _Kernel.last = self
        return out


def _timer(fn, rep_ms):
    fn()
    return _Kernel.last.us


def test_sweep_verifies_then_times_and_writes_tvm_entries(fake_gpu, caplog):
    out = fake_gpu / "cand"
    index = _build(out, shapes=[(N, K)])
    [case] = index["cases"]
    a, b, c = case["candidates"]
    kernels = {a["name"]: _Kernel(30.0), b["name"]: _Kernel(5.0, scale=1.1), c["name"]: _Kernel(20.0)}
    loaded = []

    def loader(folder, name):
        loaded.append(name)
        return kernels[name]

    db = fake_gpu / "db" / "fake.json"
    rows = tc.sweep(out, index["cases"], header=HEADER, path=db, timer=_timer, device="cpu", loader=loader,
                    out=lambda s: None)
    [res] = rows
    assert res.winner.config == KernelConfig(**c["config"]) and res.winner.us == 20.0     # the wrong 5 us one lost
    assert res.runner_up.config == KernelConfig(**a["config"]) and res.default.config == KernelConfig(**a["config"])
    bad = res.trials[KernelConfig(**b["config"])]
    assert math.isinf(bad.us) and bad.stage == "verify" and "relative error" in bad.error
    assert sorted(set(loaded)) == sorted(kernels)                                        # each cubin loaded once
    entries = load(db)["entries"]
    e = entries[entry_key(SPEC.key, "tvm", N, K, 1)]
    assert (e["kernel_hash"], e["artifact"], e["us"], e["runner_up"]["us"]) == (c["kernel_hash"], c["name"], 20.0, 30.0)
    assert e["default"]["us"] == 30.0 and e["failed"] == 1 and e["tried"] == 3 and e["format"] == "gptq"
    # resumable: an entry that timed one of the case's candidates is kept
    assert tc.sweep(out, index["cases"], header=HEADER, path=db, timer=_timer, device="cpu", loader=loader,
                    out=lambda s: None) == []
    # a cubin that is not what the index lists (rebuilt since) scores infinity, without loading
    folder = out / case["folder"]
    (folder / f"{a['name']}.cubin").write_bytes(b"rebuilt")
    loaded.clear()
    [res] = tc.sweep(out, index["cases"], header=HEADER, path=db, timer=_timer, device="cpu", loader=loader,
                     force=True, out=lambda s: None)
    assert a["name"] not in loaded and res.trials[KernelConfig(**a["config"])].stage == "build"
    with pytest.raises(tc.CandidateError, match="built for sm90, this GPU is sm80"):
        tc.sweep(out, index["cases"], header={**HEADER, "arch": "sm80"}, path=db, timer=_timer, device="cpu")


def test_index_errors_and_case_filters(tmp_path):
    with pytest.raises(tc.CandidateError, match="no index.json in .*python -m autotune tvm-build"):
        tc.read_index(tmp_path)
    (tmp_path / "index.json").write_text("{")
    with pytest.raises(tc.CandidateError, match="not valid JSON"):
        tc.read_index(tmp_path)
    cases = [{"format": "gptq", "name": "gptq", "N": 1, "K": 2, "bucket": b} for b in (1, 16)]
    index = {"cases": cases}
    assert tc.select_cases(index, ["gptq"], [(1, 2)], [9]) == [cases[1]]
    assert tc.select_cases(index, ["awq"]) == [] and tc.select_cases(index) == cases == tc.select_cases(index, ["all"])


# -- the runtime's choice -------------------------------------------------------------------------------------
def _registered(fake_gpu):
    """Two fake TVM kernels for gptq (N, K) M bucket 1, registered."""
    out = fake_gpu / "cand"
    index = _build(out, shapes=[(N, K)], max_candidates=2)
    use_tvm_artifacts(out / index["cases"][0]["folder"])
    return index["cases"][0]["candidates"]


def _db(fake_gpu, tvm_hash=None, tvm_us=5.0, triton_us=None, triton_hash=None, header=HEADER):
    path = fake_gpu / "db" / f"{tuning.gpu_slug(header['gpu'])}.json"
    cfg = KernelConfig(block_m=1, block_n=64, block_k=128, split_k=1, num_warps=4, num_stages=3)
    entries = {}
    if tvm_hash:
        entries[entry_key(SPEC.key, "tvm", N, K, 1)] = make_entry("gptq", {}, cfg, tvm_us, None, header,
                                                                   kernel_hash=tvm_hash)
    if triton_us is not None:
        entries[entry_key(SPEC.key, "triton", N, K, 1)] = make_entry(
            "gptq", {}, cfg, triton_us, None, header,
            kernel_hash=triton_hash or tuned_kernel_hash(SPEC, 1, N, K, cfg, "sm90"))
    if path.exists():
        path.unlink()
    merge_entries(path, header, entries)
    tuning._load_for.cache_clear()


def _choice(backend):
    c = choose(SPEC, N, K, 1, "sm90", backend, HEADER)
    return (c.kernel.name if c.kernel else None), c.note


def test_auto_runs_tvm_only_where_its_entry_beat_triton(fake_gpu):
    first, second = _registered(fake_gpu)
    name, note = _choice("auto")                                     # registered, never measured: Triton
    assert name is None and "no tuning entry for backend tvm" in note and "sweep --backend tvm" in note
    assert _choice("tvm") == (first["name"], "")                    # an explicit preference: the first one
    _db(fake_gpu, tvm_hash=second["kernel_hash"])
    assert _choice("auto")[0] is None and "no valid Triton entry" in _choice("auto")[1]
    assert _choice("tvm")[0] == second["name"]                      # the tuned one, not the first registered
    _db(fake_gpu, tvm_hash=second["kernel_hash"], tvm_us=5.0, triton_us=10.0)
    assert _choice("auto") == (second["name"], "")
    assert tuning.lookup_tvm(SPEC, N, K, 1, HEADER).beats_triton
    _db(fake_gpu, tvm_hash=second["kernel_hash"], tvm_us=5.0, triton_us=3.0)
    assert _choice("auto")[0] is None and "Triton is faster (3.00 us vs TVM 5.00 us)" in _choice("auto")[1]
    # a Triton entry for another kernel (the templates changed since) is no measurement to beat
    _db(fake_gpu, tvm_hash=second["kernel_hash"], triton_us=10.0, triton_hash="0" * 64)
    assert _choice("auto")[0] is None and "no valid Triton entry" in _choice("auto")[1]
    # the TVM entry timed an artifact no registered kernel is (rebuilt folder): ignored
    _db(fake_gpu, tvm_hash="f" * 64, triton_us=10.0)
    assert _choice("auto")[0] is None and "not among the registered ones" in _choice("auto")[1]
    assert _choice("tvm")[0] == first["name"]
    # another GPU's database is no measurement here
    _db(fake_gpu, tvm_hash=second["kernel_hash"], triton_us=10.0, header={**HEADER, "gpu": "Other GPU"})
    assert _choice("auto")[0] is None
    # no kernel registered for the bucket: the runtime's fallback notes, as before
    c = choose(SPEC, N, K, 16, "sm90", "auto", HEADER)
    assert c.kernel is None and c.note_key == ("tvm-bucket", SPEC.key, N, K, 16) and "M bucket 16" in c.note
    c = choose(SPEC, N, 2 * K, 1, "sm90", "tvm", HEADER)
    assert c.kernel is None and c.note_key[0] == "tvm-none"
    assert choose(SPEC, N, 2 * K, 1, "sm90", "auto", HEADER) == tvm_artifacts.TvmChoice(None)
    with pytest.raises(tvm_artifacts.TvmArtifactError, match="built for \\['sm90'\\] but the device is sm80"):
        choose(SPEC, N, K, 1, "sm80", "auto", HEADER)


# -- real candidates: TVM + nvcc here, the TVM kernel text run on llvm as the sweep's kernel -------------------
def _no_build_reason() -> str:
    from codegen import tvm_compat
    if tvm_compat.unavailable_reason():
        return f"needs TVM: {tvm_compat.unavailable_reason()}"
    if not (tb.shutil.which("nvcc") or any(map(tb.os.path.exists, tb.NVCC_FALLBACKS))):
        return "needs nvcc (the CUDA toolkit)"
    return ""


@pytest.mark.skipif(bool(_no_build_reason()), reason=_no_build_reason() or "-")
def test_tvm_build_cli_and_a_sweep_of_the_llvm_twins(fake_gpu, capsys):
    from autotune.__main__ import main
    out = fake_gpu / "cand"
    assert main(["tvm-build", "--formats", "gptq", "--shapes", f"{N},{K}", "--batches", "1", "--out", str(out),
                 "--max-candidates", "2", "--jobs", "1"]) == 0
    assert "1 cases, 2 candidates (0 failed builds)" in capsys.readouterr().out
    index = tc.read_index(out)
    [case] = index["cases"]
    folder = out / case["folder"]
    assert {(e.name, e.kernel_hash) for e in use_tvm_artifacts(folder)} == \
        {(c["name"], c["kernel_hash"]) for c in case["candidates"]}
    times = iter([7.0, 9.0, 7.0, 9.0])

    def llvm_twin(folder, name):   # the same TVMScript the cubin came from, built for the CPU
        cfg = KernelConfig(**next(c["config"] for c in case["candidates"] if c["name"] == name))
        return tb.CpuKernel(lower(SPEC, 1, N, K, cfg, "sm90"))

    [res] = tc.sweep(out, index["cases"], header=HEADER, path=fake_gpu / "db" / "fake.json",
                     timer=lambda fn, rep: (fn(), next(times))[1], device="cpu", loader=llvm_twin, out=lambda s: None)
    assert res.failed == 0 and res.winner.config == KernelConfig(**case["candidates"][0]["config"])
    assert res.winner.rel_err < 2e-3
