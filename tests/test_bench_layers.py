"""`python -m bench layers` on the CPU: the smoke path (QuantLinear's reference path, no timing) and the
correctness gate, which must fail loudly when a linear's weights are not the ones the reference decoded."""
import json

import torch

import bench.layer_stack as layer_stack
import ir
from bench.__main__ import main as bench_main

TINY = ["--hidden", "128", "--kv", "32", "--inter", "256", "--layers", "1"]


def _doc(out):
    return json.loads((out / "layers.json").read_text())


def test_smoke_cpu(tmp_path, capsys):
    rc = bench_main(["layers", "--formats", "int4_g128_asym", "gguf_q4_0", *TINY, "--batches", "1", "2",
                     "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    doc = _doc(tmp_path)
    assert [(c["format"], c["M"], c["status"]) for c in doc["cases"]] == [
        ("int4_g128_asym", 1, "ok"), ("int4_g128_asym", 2, "ok"), ("gguf_q4_0", 1, "ok"), ("gguf_q4_0", 2, "ok")]
    for c in doc["cases"]:
        assert c["linear_err"] <= layer_stack.LINEAR_TOL and c["stack_err"] <= layer_stack.STACK_TOL
        assert c.get("eager_us") is None and c.get("graph_us") is None  # no timing without CUDA
    assert [c["M"] for c in doc["fp16"]] == [1, 2]
    md = (tmp_path / "layers.md").read_text()
    assert "No timing" in md and "| int4_g128_asym | 1 |" in md
    table = printed.strip().splitlines()[-7:]  # printed last: header, 2 fp16 rows, 4 cases
    assert table[0].startswith("format") and "n/a" in table[-1]


def test_gate_fails_on_wrong_weights(tmp_path, capsys):
    rc = bench_main(["layers", "--formats", "int4_g128_asym", *TINY, "--batches", "1",
                     "--corrupt", "layers.0.mlp.down_proj", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 1
    (case,) = _doc(tmp_path)["cases"]
    assert case["status"] == "FAILED" and "layers.0.mlp.down_proj rel err" in case["reason"]
    assert "FAILED" in printed and "layers.0.mlp.down_proj" in printed


def test_per_linear_check_sees_k_proj_at_m1():
    """At M=1 attention returns v, so a wrong k_proj cannot change the stack's output: only the per-linear
    check sees it."""
    spec = ir.get_format("int4_g128_asym")
    d = {"hidden": 128, "kv": 32, "inter": 256, "heads": 32, "kv_heads": 8}
    qs = layer_stack.QuantStack(spec, d, 1, layer_stack.synthesize(spec, d, 1), "cpu")
    qs.corrupt("layers.0.self_attn.k_proj")
    res = layer_stack.check(qs, layer_stack.sample_x(1, 128, "cpu"))
    assert res["stack_err"] <= layer_stack.STACK_TOL
    assert res["status"] == "FAILED" and res["worst_linear"] == "layers.0.self_attn.k_proj"


def test_calibration_keeps_updates_at_unit_rms():
    """GGUF Q4_K synthetic codes have a large common mean; the calibrated norms still give every block an
    update of rms ~1 and a finite fp16 output."""
    spec = ir.get_format("gguf_q4_k")
    d = {"hidden": 256, "kv": 64, "inter": 512, "heads": 8, "kv_heads": 2}
    qs = layer_stack.QuantStack(spec, d, 2, layer_stack.synthesize(spec, d, 2), "cpu")
    x = layer_stack.calibration_x(256, "cpu").float()
    with torch.no_grad():
        for layer in qs.ref.layers:
            for g, block in layer.blocks():
                upd = block(torch.nn.functional.rms_norm(x, g.shape, g, layer_stack.EPS))
                assert 0.8 < float(upd.pow(2).mean().sqrt()) < 1.25
                x = x + upd
    res = layer_stack.check(qs, layer_stack.sample_x(4, 256, "cpu"))
    assert res["status"] == "ok", res["reason"]
    assert torch.isfinite(res["y"]).all()
