"""`python -m bench` on the CPU: the smoke run under the interpreter (correctness, null times), the regression
gate on real runs with a deterministic stand-in timer, sharding and merging, the report, the peers' CPU paths."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ir
from bench import compare as bcompare
from bench import report as breport
from bench import run as brun

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_smoke_command(tmp_path):
    """The documented CPU command: tiny shape, interpreter, correctness checked, every time null."""
    out = tmp_path / "res"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # bench sets it itself
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--formats", "gptq", "--shapes", "256,512",
                           "--batches", "1", "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no timing is meaningful" in proc.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["header"]["gpu"] is None and "git_commit" in doc["header"]
    by = {c["name"]: c for c in doc["cases"]}
    g = by["gptq"]
    assert g["status"] == "ok" and g["rel_err"] < 5e-3 and g["config_source"] == "default"
    assert g["us"] is None and g["eager_us"] is None and g["floor_us"] is None and g["bytes"] > 0
    # peers: gemlite needs CUDA (skipped, with the reason); torch's tinygemm / fp8 and bitsandbytes check on CPU
    assert by["gemlite_a16w4_g128"]["status"] == "skipped" and "CUDA" in by["gemlite_a16w4_g128"]["reason"]
    for name in ("tinygemm_int4_g128", "bnb_nf4_b64_dq", "fp8_cublas_w8a8"):
        assert by[name]["status"] == "ok", by[name]
        assert by[name]["rel_err"] < 2e-2 and by[name]["us"] is None
    md = (out / "results.md").read_text()
    assert "No timing" in md and "gemlite_a16w4_g128 (peer) | skipped" in md


class _CountingTimer:
    """Stands in for the CUDA timer: a call's 'time' is 7 us per quantcc kernel launch it makes (fp16 cuBLAS,
    which launches none, reads 50 us), so a kernel run twice per call reads twice as slow, deterministically."""
    launches = 0

    def __init__(self, cuda, rep_ms, eager_iters):
        self.cuda = True

    def __call__(self, fn):
        _CountingTimer.launches = 0
        fn()
        us = 7.0 * _CountingTimer.launches or 50.0
        return us, us + 20.0


class _FakeFloor:
    def __init__(self, cuda, rep_ms):
        pass

    def __call__(self, nbytes):
        return 1.0 + nbytes / 2e6, {"programs": 1056, "block": 2048, "num_warps": 4}


@pytest.fixture
def fake_timing(monkeypatch):
    real_build = brun.build_kernel

    def counting_build(*a, **k):
        run, fields = real_build(*a, **k)

        def counted(x, t, out):
            _CountingTimer.launches += 1
            return run(x, t, out)
        return counted, fields
    monkeypatch.setattr(brun, "Timer", _CountingTimer)
    monkeypatch.setattr(brun, "ReadFloor", _FakeFloor)
    monkeypatch.setattr(brun, "build_kernel", counting_build)


def _run(tmp_path, out, *extra):
    rc = brun.main(["--formats", "gptq", "--shapes", "256,512", "--batches", "1", "--peers", "none",
                    "--no-plots", "--out", str(tmp_path / out), *extra])
    assert rc == 0
    return str(tmp_path / out / "results.json")


def test_gate_passes_unchanged_and_names_a_slowed_kernel(tmp_path, fake_timing, capsys):
    base, again, slow = _run(tmp_path, "a"), _run(tmp_path, "b"), _run(tmp_path, "c", "--slow-down", "2")
    doc = json.loads(Path(slow).read_text())
    case = next(c for c in doc["cases"] if c["kind"] == "quantcc")
    assert case["us"] == 14.0 and case["fp16_us"] == 50.0 and case["speedup_vs_fp16"] == pytest.approx(50 / 14)
    assert case["floor_frac"] == pytest.approx(case["floor_us"] / 14.0) and case["tbps"] > 0
    assert any(c["kind"] == "baseline" and c["name"] == "fp16_cublas" for c in doc["cases"])
    capsys.readouterr()
    assert bcompare.main_compare([base, again, "--fail-above", "5"]) == 0
    assert "OK" in capsys.readouterr().out
    assert bcompare.main_compare([base, slow, "--fail-above", "5"]) == 1
    text = capsys.readouterr().out
    assert "quantcc:gptq|triton|256x512|M1" in text and "+100.0%" in text
    assert bcompare.main_compare([base, slow, "--fail-above", "150"]) == 0


def _doc(gpu, cases, commit="c1"):
    return {"schema": 1, "header": {"gpu": gpu, "git_commit": commit, "peers": {}}, "runs": [], "cases": cases}


def _case(name, us, status="ok", N=64, K=64, M=1, kind="quantcc"):
    c = brun.new_case(kind, name, "triton", N, K, M, klass="int4 (GPTQ-like)", bits_per_weight=4.0, status=status)
    if us is not None:
        nbytes = N * K // 2 + 2 * M * (N + K)
        c.update(us=us, eager_us=us + 10, bytes=nbytes, tbps=nbytes / us / 1e6, floor_us=us * 0.8, floor_frac=0.8,
                 fp16_us=2 * us, speedup_vs_fp16=2.0, rel_err=1e-4)
    return c


def test_compare_refuses_different_gpus_and_flags_new_failures(tmp_path, capsys):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(_doc("NVIDIA H100 80GB HBM3", [_case("gptq", 10.0), _case("awq", 10.0)])))
    b.write_text(json.dumps(_doc("NVIDIA H200", [_case("gptq", 10.0)])))
    c.write_text(json.dumps(_doc("NVIDIA H100 80GB HBM3", [_case("gptq", 10.2), _case("awq", None, "FAILED")])))
    assert bcompare.main_compare([str(a), str(b)]) == 2
    assert "different GPUs" in capsys.readouterr().out
    assert bcompare.main_compare([str(a), str(c), "--fail-above", "5"]) == 1
    out = capsys.readouterr().out
    assert "quantcc:awq" in out and "FAILED in NEW" in out and "quantcc:gptq" not in out.split("FAIL:")[1]


def test_shards_partition_the_work_and_merge_rebuilds(tmp_path):
    args = brun.parse_args(["--formats", "gptq", "awq", "bnb_nf4", "--shapes", "256,512", "512,1024",
                            "--peers", "tinygemm_int4_g128"])
    every = set(brun.work_items(args))
    slices = []
    for i in (1, 2, 3):
        args.shard = (i, 3)
        slices.append(brun.work_items(args))
    assert sorted(x for s in slices for x in s) == sorted(every) and len(every) == 8
    d1 = _doc("GPU X", [_case("gptq", 10.0), _case("awq", None, "not_run")], "c1")
    d2 = _doc("GPU X", [_case("awq", 12.0), _case("gptq", None, "not_run")], "c2")
    merged = bcompare.merge([d1, d2], ["1", "2"])
    by = {c["name"]: c for c in merged["cases"]}
    assert by["gptq"]["us"] == 10.0 and by["awq"]["us"] == 12.0 and "c1" in merged["header"]["git_commit"]
    with pytest.raises(SystemExit, match="different GPUs"):
        bcompare.merge([d1, _doc("GPU Y", [])], ["1", "2"])
    paths = [tmp_path / "1.json", tmp_path / "2.json"]
    for p, d in zip(paths, (d1, d2)):
        p.write_text(json.dumps(d))
    assert bcompare.main_merge([str(p) for p in paths] + ["--out", str(tmp_path / "m"), "--no-plots"]) == 0
    assert len(json.loads((tmp_path / "m" / "results.json").read_text())["cases"]) == 2
    # each row says which commit measured it, also after a re-merge of the merged file with a newer shard
    assert by["gptq"]["commit"] == "c1" and by["awq"]["commit"] == "c2"
    again = bcompare.merge([merged, _doc("GPU X", [_case("bnb_nf4", 9.0)], "c3")], ["m", "3"])
    assert {c["name"]: c["commit"] for c in again["cases"]} == {"gptq": "c1", "awq": "c2", "bnb_nf4": "c3"}
    # the newest shard's measurement wins, whatever order the files are given in (a glob puts s17 before s9)
    old = dict(_doc("GPU X", [_case("gptq", 20.0)], "c0"), runs=[{"started": "2026-11-20T10:00:00+0000"}])
    new = dict(_doc("GPU X", [_case("gptq", 15.0)], "c4"), runs=[{"started": "2026-11-24T09:00:00+0000"}])
    for docs in ([old, new], [new, old]):
        assert {c["name"]: c["us"] for c in bcompare.merge(docs, ["a", "b"])["cases"]} == {"gptq": 15.0}
    md = (tmp_path / "m" / "results.md").read_text()
    assert "| 12.0 |" in md and "| c2 |" in md and "| c1 |" in md


def test_time_budget_and_skip_done(tmp_path, fake_timing):
    first = _run(tmp_path, "a", "--time-budget", "0")
    cases = json.loads(Path(first).read_text())["cases"]
    assert cases and all(c["status"] == "not_run" for c in cases)
    done = _run(tmp_path, "b")
    again = _run(tmp_path, "c", "--skip-done", done)
    assert json.loads(Path(again).read_text())["cases"] == []


def test_report_tables_and_plots(tmp_path):
    cases = []
    for N, K in ((64, 64), (128, 64)):
        for M in (1, 16):
            cases += [_case("gptq", 10.0 * M, N=N, K=K, M=M), _case("gemlite_a16w4_g128", 12.0 * M, N=N, K=K, M=M,
                                                                     kind="peer")]
            b = _case("fp16_cublas", 20.0 * M, N=N, K=K, M=M, kind="baseline")
            cases.append(dict(b, klass="fp16"))
    cases.append(_case("qtip", None, "FAILED", M=16))
    written = breport.write_outputs(tmp_path, _doc("NVIDIA H100 80GB HBM3", cases))
    names = sorted(p.name for p in written)
    assert names == ["m1_floor_fraction.png", "results.json", "results.md", "shape_128x64.png", "shape_64x64.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    md = (tmp_path / "results.md").read_text()
    assert "## M=1: fraction of the read floor" in md and "| gptq | int4 (GPTQ-like) | 4.00 | 80% (10.0 us)" in md
    assert "| qtip | FAILED |" in md and "## M=16: speedup vs fp16 cuBLAS" in md


def test_every_format_has_a_report_class():
    for name in ir.list_formats():
        assert breport.format_class(ir.get_format(name)) in breport.CLASSES, name
    assert breport.gpu_slug({"gpu": "NVIDIA H100 80GB HBM3"}) == "nvidia_h100_80gb_hbm3"
    assert breport.gpu_slug({"gpu": None}) == "cpu_interpreter"


def test_check_output_verdicts():
    ref = torch.ones(2, 8, dtype=torch.float64)
    assert "status" not in brun.check_output(ref.half(), ref, torch.float16)
    bad = brun.check_output(torch.full((2, 8), float("nan")).half(), ref, torch.float16)
    assert bad["status"] == "FAILED" and "NaN" in bad["reason"]
    off = brun.check_output((ref * 1.1).half(), ref, torch.float16)
    assert off["status"] == "FAILED" and off["rel_err"] == pytest.approx(0.1, rel=1e-2)


def test_cli_rejects_unknown_names():
    with pytest.raises(SystemExit):
        brun.parse_args(["--formats", "nope"])
    with pytest.raises(SystemExit):
        brun.parse_args(["--peers", "nope"])
    with pytest.raises(SystemExit):
        brun.parse_args(["--shard", "4/3"])


def test_compile_only_runs_the_host_code_without_launching(monkeypatch):
    """The precompile workers' stand-in: the generated module's own run() reaches the kernel with its real
    arguments, which go to Triton's warmup (compile, no launch); the real kernel object is restored after."""
    from codegen.arch import default_config
    from runtime.kernels import get_kernel

    spec = ir.get_format("gptq")
    N, K, M = 256, 512, 1
    mod = get_kernel(spec, M, N, K, "sm90", default_config(spec, (M, N, K), "sm90"))
    calls = []

    class FakeJit:
        def warmup(self, *args, grid, **kwargs):
            calls.append((grid, args, kwargs))

    real = getattr(mod, mod.KERNEL_NAME)
    monkeypatch.setattr(mod, mod.KERNEL_NAME, FakeJit())
    tensors = {k: torch.zeros(s, dtype=getattr(torch, d)) for k, (s, d) in
               spec.tensor_schema(N, K, include_optional=False).items()}
    brun.compile_only(mod, tensors, M, N, K, "cpu")
    assert len(calls) == 1
    grid, args, kwargs = calls[0]
    assert grid[0] == -(-N // mod.CONFIG["block_n"]) and kwargs["num_warps"] == mod.CONFIG["num_warps"]
    assert isinstance(getattr(mod, mod.KERNEL_NAME), FakeJit)   # restored to what it was
    monkeypatch.setattr(mod, mod.KERNEL_NAME, real)
    assert brun.start_precompile(brun.parse_args(["--formats", "gptq", "--jobs", "0"]),
                                 [("quantcc", "gptq", N, K)], "sm90", {}) == (None, None)


@pytest.mark.parametrize("packed", [False, True])
def test_access_pattern_kernel_reads_every_word_once(packed):
    """bench.access_pattern's load-and-sum kernel (interpreter): the strip walk and the tile-contiguous walk each
    read every word of the matrix exactly once, so both sums equal the matrix's sum (tiles, splits, odd grids)."""
    import triton

    from bench.access_pattern import _strip_sum
    R, C = 64, 128
    src = torch.randint(0, 100, (R, C), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    for block_r, block_c, split in ((16, 64, 2), (8, 32, 4), (32, 128, 1)):
        iters = triton.cdiv(R, split * block_r)
        grid = (C // block_c, split)
        out = torch.zeros(grid[0] * grid[1], dtype=torch.int32)
        _strip_sum[grid](src, out, R, C, iters, PACKED=packed, BLOCK_R=block_r, BLOCK_C=block_c)
        assert int(out.sum()) == int(src.sum()), (packed, block_r, block_c, split)


@pytest.mark.parametrize("n_words,programs,block,unroll", [(16 * 37, 3, 32, 2), (16 * 200, 2, 64, 4), (16 * 5, 4, 32, 1)])
def test_read_floor_kernel_reads_every_word_once(n_words, programs, block, unroll):
    """The floor kernel's unmasked rounds plus its masked tail sum each word exactly once (interpreter)."""
    from bench.read_floor import _launch, floor_words
    src = torch.randint(-1000, 1000, (n_words,), dtype=torch.int32)
    out = torch.empty(programs, dtype=torch.int32)
    for evict in ("evict_first", ""):   # the floor's hint, and none (bench.flush_probe's comparison)
        out.zero_()
        _launch(src, out, programs, block, 4, unroll, evict)
        assert out.sum().item() == src.sum().item()
    assert floor_words(4 * n_words + 2) == n_words + 16 and floor_words(1) == 16  # rounded up to 16 words
    with pytest.raises(ValueError, match="multiple of 16"):
        _launch(src[:-1], out, programs, block, 4, unroll)


def test_flush_probe_needs_a_gpu_and_parses_its_cases(capsys, monkeypatch):
    from bench import flush_probe
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert flush_probe.main(["--case", "gptq", "4096,4096", "m1n64k128s8w2p2r128e"]) == 2
    assert "CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        flush_probe.main(["--case", "gptq", "4096,4096"])   # a case is FORMAT N,K LABEL


def test_bounds_compiles_the_tuned_kernel_and_names_its_bound(tmp_path, capsys):
    """bench.bounds reads the database entry, compiles that kernel offline and sets memory / issue times beside
    the measured one; a missing database is a clear error."""
    from bench import bounds
    from codegen.arch import default_config
    from runtime.tuning import entry_key
    spec = ir.get_format("gptq")
    cfg = default_config(spec, (1, 256, 1024), "sm90")
    db = tmp_path / "db.json"
    db.write_text(json.dumps({"entries": {entry_key(spec.key, "triton", 256, 1024, 1): {"config": cfg.to_dict(),
                                                                                         "us": 5.0}}}))
    md = tmp_path / "b.md"
    assert bounds.main(["--formats", "gptq", "--shapes", "256,1024", "--db", str(db), "--results",
                        str(tmp_path / "none.json"), "--md", str(md), "--json", str(tmp_path / "b.json")]) == 0
    row = json.loads((tmp_path / "b.json").read_text())[0]
    assert row["us"] == 5.0 and row["us_source"] == "database" and row["config"] == cfg.label
    assert 2.0 < row["instr_per_weight"] < 12.0 and row["registers"] > 0 and row["warps_per_sm"] > 0
    pts = bounds.parse_floor(bounds.ANCHOR_FLOOR)
    assert bounds.floor_us(8.4e6, pts) == pytest.approx(8.9) and bounds.floor_us(125e6, pts) == pytest.approx(50.4)
    assert abs(bounds.floor_us(250e6, pts) - (50.4 + 125e6 * 32.1 / 91.4e6)) < 1e-9  # the last segment's slope
    assert row["memory_us"] == bounds.floor_us(row["bytes"], pts) and row["bytes"] > 256 * 1024 // 2
    assert "| gptq | 256x1024 |" in md.read_text()
    with pytest.raises(SystemExit, match="no tuning database"):
        bounds.main(["--formats", "gptq", "--db", str(tmp_path / "missing.json")])
    # M=16: the bucket-16 entry's gemm kernel (MMAs in its K loop), x and y bytes for 16 rows
    cfg16 = default_config(spec, (16, 256, 1024), "sm90")
    db.write_text(json.dumps({"entries": {entry_key(spec.key, "triton", 256, 1024, 16): {"config": cfg16.to_dict(),
                                                                                          "us": 7.0}}}))
    assert bounds.main(["--formats", "gptq", "--shapes", "256,1024", "--batch", "16", "--db", str(db), "--results",
                        str(tmp_path / "none.json"), "--json", str(tmp_path / "b16.json")]) == 0
    row16 = json.loads((tmp_path / "b16.json").read_text())[0]
    assert row16["M"] == 16 and row16["config"] == cfg16.label and row16["bytes"] == row["bytes"] + 2 * 15 * (256 + 1024)


def test_report_marks_floors_of_the_old_kernel():
    """A floor measured before session 7 (its config has no `unroll`) is marked: † over a word count not divisible
    by 16 (it streamed with 4-byte loads), ‡ otherwise (.cg loads, ~10% slower); the current kernel's are not."""
    old = {"programs": 1056, "block": 2048, "num_warps": 4}
    odd = dict(_case("bnb_nf4", 10.0), bytes=121242692, floor_config=old)
    aligned = dict(_case("gptq", 10.0), bytes=122101760, floor_config=old)
    new = dict(_case("bnb_fp4", 10.0), bytes=121242692, floor_config=dict(old, unroll=2))
    assert [breport.floor_mark(c) for c in (odd, aligned, new)] == ["†", "‡", ""]
    md = breport.render_markdown(_doc("GPU X", [odd, aligned, new]))
    assert "80%†" in md and "80%‡" in md and md.count("†") == 3 and md.count("‡") == 3  # 2 table cells + the note
    assert all(note in md for note in breport.FLOOR_NOTES.values())
    md_new = breport.render_markdown(_doc("GPU X", [new]))
    assert "†" not in md_new and "‡" not in md_new


NCU_RAW = '''==PROF== Connected to process 123
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","gpu__time_duration.sum","dram__bytes_read.sum","gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed","smsp__issue_active.avg.pct_of_peak_sustained_active","sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active","sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active","sm__warps_active.avg.pct_of_peak_sustained_active","sm__maximum_warps_per_active_cycle_pct","launch__registers_per_thread","launch__grid_size","smsp__average_warp_latency_issue_stalled_long_scoreboard.ratio","smsp__average_warp_latency_issue_stalled_wait.ratio","smsp__average_warp_latency_issue_stalled_long_scoreboard_not_issued.ratio"
"","","","","","","","nsecond","byte","%","%","%","%","%","%","register/thread","","","",""
"0","123","python3","host","{name}","1","7","{ns}","{bytes}","{dram}","{issue}","{alu}","31.5","40.2","50","128","1,056","{ls}","1.5","9.0"
'''


@pytest.mark.parametrize("dram, issue, alu, ls, want", [
    ("88.1", "40", "35", "6.0", "memory"),
    ("60.0", "70", "84.5", "6.0", "issue (alu pipe 84%)"),
    ("60.0", "85", "50", "6.0", "issue (slots 85%)"),
    ("55.0", "40", "35", "6.0", "latency (top stall: long_scoreboard)"),
    ("55.0", "40", "35", "0.5", "latency (top stall: wait)"),
])
def test_counters_parse_and_verdict(dram, issue, alu, ls, want):
    """bench.counters reads ncu's raw CSV (units row and non-CSV lines skipped, "1,056" a number) and names the bound;
    the _not_issued twin of a stall reason is not a reason of its own."""
    from bench import counters
    text = NCU_RAW.format(name="k_gemv", ns="54600", bytes="122000000", dram=dram, issue=issue, alu=alu, ls=ls)
    kernels = counters.parse_raw_csv(text)
    assert list(kernels) == ["k_gemv"]
    s = counters.summarize(kernels["k_gemv"])
    assert s["verdict"] == want
    assert s["time_us"] == pytest.approx(54.6) and s["dram_tbps"] == pytest.approx(122e6 / 54.6 / 1e6)
    assert s["grid"] == 1056 and s["registers"] == 128
    assert s["pipes_pct"][0][0] == ("alu" if float(alu) > 31.5 else "fma")
    assert "long_scoreboard_not_issued" not in dict(s["stalls"])
    row = counters.format_row("k", s)
    assert row.count("|") == counters.HEADER.splitlines()[0].count("|") and want in row


def test_counters_refuses_output_without_rows():
    from bench import counters
    with pytest.raises(ValueError, match="no ncu CSV rows"):
        counters.parse_raw_csv("==PROF== No kernels were profiled.\n")
    with pytest.raises(ValueError, match="Kernel Name"):
        counters.parse_raw_csv('"a","b"\n"1","2"\n')


def test_counters_report_recomputes_from_saved_metrics(tmp_path):
    from bench import counters
    text = NCU_RAW.format(name="k", ns="1000", bytes="2000000", dram="90", issue="10", alu="5", ls="1")
    m = counters.parse_raw_csv(text)["k"]
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"case": "gptq 1x1 M=1", "config": "m1", "summary": {}, "metrics": m}) + "\n")
    out = counters.report(str(path))
    assert out.startswith(counters.HEADER) and "| gptq 1x1 M=1 | 1.0 | 2.00 | 90% |" in out and "memory" in out
