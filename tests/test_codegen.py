"""Codegen: plans, deterministic rendering, golden files, build CLI, standalone artifacts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ir
from codegen.__main__ import main as codegen_main
from codegen.arch import default_config
from codegen.artifacts import build
from codegen.plan import lower
from codegen.triton_backend import render_triton
from ir import KernelConfig, SpecError

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "triton"
GOLDEN_CONFIG = KernelConfig(block_m=1, block_n=64, block_k=128, split_k=1, num_warps=4, num_stages=2)


def _golden_source(name: str) -> str:
    spec = ir.get_format(name)
    K = max(spec.k_multiple, 128) * 4
    N = max(spec.n_multiple, 16) * 4
    return render_triton(lower(spec, 1, N, K, GOLDEN_CONFIG, "sm90", family="gemv"))


@pytest.mark.parametrize("name", ir.list_formats())
def test_golden_render(name):
    """Template changes show as readable diffs. Regenerate with QUANTCC_UPDATE_GOLDEN=1 after reviewing."""
    src = _golden_source(name)
    path = GOLDEN / f"{name}.py"
    if os.environ.get("QUANTCC_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(src)
    assert path.exists(), f"no golden file for {name}; run QUANTCC_UPDATE_GOLDEN=1 pytest tests/test_codegen.py"
    # the header's template hash covers every template, so it changes with any template edit: compare the rest
    strip = lambda text: "\n".join(line for line in text.splitlines() if "template hash:" not in line)  # noqa: E731
    assert strip(src) == strip(path.read_text()), f"rendered kernel for {name} differs from {path} (template change?)"


def test_render_is_deterministic_and_has_header():
    a, b = _golden_source("gguf_q4_0"), _golden_source("gguf_q4_0")
    assert a == b
    head = a.splitlines()[:6]
    assert "do not edit" in head[0] and "format:   gguf_q4_0" in head[2] and "spec key:" in head[2]
    assert any("arch:     sm90" in h for h in head)
    imports = [line for line in a.splitlines() if line.startswith(("import ", "from "))]
    assert sorted(imports) == ["import functools", "import json", "import os", "import torch", "import triton",
                               "import triton.language as tl"]


def test_plan_refuses_illegal_configs():
    spec = ir.get_format("gguf_q4_0")
    with pytest.raises(SpecError, match="tl.dot"):
        lower(spec, 16, 64, 256, KernelConfig(block_m=8), "sm90", family="gemm")
    with pytest.raises(SpecError, match="exceeds K"):
        lower(spec, 1, 64, 256, KernelConfig(block_k=128, split_k=4), "sm90")
    with pytest.raises(SpecError, match="K = 100"):
        lower(spec, 1, 64, 100, KernelConfig(), "sm90")
    with pytest.raises(SpecError, match="--arch 'sm70'"):
        lower(spec, 1, 64, 256, KernelConfig(), "sm70")


def test_default_config_is_legal_and_arch_dependent():
    spec = ir.get_format("gguf_q4_0")
    for M in (1, 2, 16, 128, 1024):
        cfg = default_config(spec, (M, 4096, 4096), "sm90")
        lower(spec, M, 4096, 4096, cfg, "sm90")
    # fewer SMs need less split-K to fill the machine
    assert default_config(spec, (1, 4096, 4096), "sm86").split_k <= default_config(spec, (1, 4096, 4096), "sm90").split_k


def test_cli_list_and_show(capsys):
    assert codegen_main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ir.list_formats():
        assert name in out
    assert codegen_main(["show", "gguf_q4_0", "--shape", "64,256"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out[: out.index("# plan")])
    assert data["tensor_schema"]["blocks"] == {"shape": [64, 144], "dtype": "uint8"}
    assert data["key"] == ir.get_format("gguf_q4_0").key


def test_cli_errors_are_clear(capsys, tmp_path):
    assert codegen_main(["build", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown format 'nope'" in capsys.readouterr().err
    assert codegen_main(["build", "gguf_q4_0", "--shapes", "64,100", "--out", str(tmp_path)]) == 2
    assert "K = 100" in capsys.readouterr().err
    assert codegen_main(["show", "gguf_q4_0", "-o", "bits"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_build_is_deterministic(tmp_path):
    spec = ir.get_format("bnb_nf4")
    m1 = build(spec, "sm90", tmp_path / "a", shapes=[(128, 256)], batches=[1, 16])
    m2 = build(spec, "sm90", tmp_path / "b", shapes=[(128, 256)], batches=[1, 16])
    assert m1 == m2
    for k in m1["kernels"]:
        assert (tmp_path / "a" / k["file"]).read_bytes() == (tmp_path / "b" / k["file"]).read_bytes()


_STANDALONE = r'''
import json, sys, importlib.util
import torch
assert not any(m.split(".")[0] in ("ir", "codegen", "runtime", "autotune", "bench") for m in sys.modules)
out_dir, data = sys.argv[1], torch.load(sys.argv[2])
manifest = json.load(open(f"{out_dir}/manifest.json"))
worst = 0.0
for k in manifest["kernels"]:
    spec = importlib.util.spec_from_file_location(k["name"], f"{out_dir}/{k['file']}")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    for case in k["cases"]:
        x = data["x"][: case["M"]]
        y = getattr(mod, k["entry_point"])(x, data["tensors"], case["N"]).double()
        ref = x.double() @ data["W"].T
        worst = max(worst, ((y - ref).norm() / ref.norm()).item())
assert not any(m.split(".")[0] in ("ir", "codegen", "runtime", "autotune", "bench") for m in sys.modules)
print(f"OK {worst:.3e}")
'''


def test_built_artifacts_run_in_a_fresh_process_without_quantcc(tmp_path):
    """The main job's output: kernels import from the folder with torch + triton only and match the reference."""
    name = "ccq" if "ccq" in ir.list_formats() else "gguf_q4_0"
    spec = ir.get_format(name)
    N, K = max(spec.n_multiple, 16) * 2, max(spec.k_multiple, 128) * 2
    out = tmp_path / "art"
    assert codegen_main(["build", name, "--arch", "sm90", "--out", str(out), "--shapes", f"{N},{K}",
                         "--batches", "1", "16"]) == 0
    g = torch.Generator().manual_seed(7)
    qt = ir.quantize(spec, torch.randn(N, K, generator=g) * 0.05)
    data = {"x": (torch.randn(16, K, generator=g) * 0.5).half(), "tensors": qt.tensors,
            "W": ir.dequantize(qt).double()}
    torch.save(data, tmp_path / "data.pt")
    script = tmp_path / "run.py"
    script.write_text(_STANDALONE)
    env = dict(os.environ, PYTHONPATH="", TRITON_INTERPRET="1" if not torch.cuda.is_available() else "0")
    r = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "data.pt")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.split()[-1]) < 2e-3, r.stdout


def test_unsupported_arch_combinations_are_refused_at_build_time(capsys, tmp_path):
    """fp8 needs sm89/sm90; a whole-dimension Hadamard needs a power-of-two dimension."""
    assert codegen_main(["build", "w8a8_static", "-o", "weight=fp8_e4m3", "--arch", "sm80",
                         "--out", str(tmp_path / "a")]) == 2
    assert "needs fp8 (e4m3) tensor cores; arch sm80 has none" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert codegen_main(["build", "qtip", "--shapes", "4096,28672", "--out", str(tmp_path / "b")]) == 2
    assert "K = 28672 is not a power of two" in capsys.readouterr().err
