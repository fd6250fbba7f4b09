"""QuantLinear dispatching to prebuilt TVM kernels (runtime/tvm_artifacts.py), on the CPU with a faked GPU:
registration checks (missing or corrupt manifests), selection per M bucket from a real artifact folder built
here with the TVM backend (TVMScript -> CUDA C -> nvcc cubin), the once-said Triton fallback for a missing
bucket (the Triton kernel runs under the interpreter), arch refusal, the QUANTCC_TVM_ARTIFACTS knob and the
backend preference. The cubin launch itself needs a GPU: tests/test_runtime_gpu.py::test_tvm_backend_*."""
import json
import logging
import shutil

import pytest
import torch
from kernel_harness import REL_TOL

import ir
from codegen import tvm_compat
from ir import SpecError
from ir.synthetic import synthetic_quantized
from runtime import QuantLinear, TvmArtifactError, op, set_backend, tvm_artifacts, use_tvm_artifacts

N, K = 64, 256


def _no_build_reason() -> str:
    if tvm_compat.unavailable_reason():
        return f"building TVM artifacts needs TVM: {tvm_compat.unavailable_reason()}"
    from codegen import tvm_backend as tb
    if not (tb.shutil.which("nvcc") or any(map(tb.os.path.exists, tb.NVCC_FALLBACKS))):
        return "building TVM artifacts needs nvcc (the CUDA toolkit)"
    return ""


needs_build = pytest.mark.skipif(bool(_no_build_reason()), reason=_no_build_reason() or "-")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """gptq at (N, K) = (64, 256), TVM kernels for M = 1 (gemv) and 16 (gemm), sm90: what
    `python -m codegen build gptq --arch sm90 --backend tvm --shapes 64,256 --batches 1 16` writes."""
    from codegen.artifacts import build
    out = tmp_path_factory.mktemp("tvm") / "gptq"
    build(ir.get_format("gptq"), "sm90", out, "tvm", shapes=[(N, K)], batches=[1, 16])
    return out.resolve()


def _layer(backend=None, seed=0):
    qt = synthetic_quantized(ir.get_format("gptq"), N, K, seed=seed)
    bias = torch.randn(N, generator=torch.Generator().manual_seed(seed)) * 0.1
    return QuantLinear.from_quantized(qt, bias, backend=backend).half()


def _ref(q, x):
    return x.double() @ q.dequantize().double().T + q.bias.double()


def _tvm_warnings(caplog):
    return [r.message for r in caplog.records if "TVM" in r.message]


# -- registration ------------------------------------------------------------------------------------------
def _manifest_folder(path, manifest, cubin=True):
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    if cubin:
        (path / "k.cubin").write_bytes(b"\0")
    return path


LAUNCH = {k: {} for k in tvm_artifacts._LAUNCH_KEYS}
GOOD_KERNEL = {"name": "k", "backend": "tvm", "files": {"cubin": "k.cubin"}, "launch": LAUNCH,
               "cases": [{"M": 1, "N": N, "K": K}]}


def test_registration_refuses_missing_and_corrupt_folders(fake_gpu):
    manifest = {"spec_key": "abc", "arch": "sm90", "format": "gptq", "kernels": [GOOD_KERNEL]}
    with pytest.raises(TvmArtifactError, match=r"TVM artifact folder .*nowhere does not exist; build it with "
                                               r"`python -m codegen build FORMAT --arch ARCH --backend tvm"):
        use_tvm_artifacts(fake_gpu / "nowhere")
    (fake_gpu / "empty").mkdir()
    with pytest.raises(TvmArtifactError, match="no manifest.json in TVM artifact folder .*empty; build it"):
        use_tvm_artifacts(str(fake_gpu / "empty"))
    _manifest_folder(fake_gpu / "parent" / "gptq", manifest)
    with pytest.raises(TvmArtifactError, match=r"its subfolders \['gptq'\] are artifact folders: register those"):
        use_tvm_artifacts(fake_gpu / "parent")
    bad = _manifest_folder(fake_gpu / "json", '{"spec_key": "abc", ')
    with pytest.raises(TvmArtifactError, match=r"manifest.json is not valid JSON .*; rebuild the folder"):
        use_tvm_artifacts(bad)
    other = _manifest_folder(fake_gpu / "other", {"kernels": []})
    with pytest.raises(TvmArtifactError, match="is not a quantcc artifact manifest .*'spec_key', 'arch'"):
        use_tvm_artifacts(other)
    triton_only = _manifest_folder(fake_gpu / "triton", {**manifest, "kernels": [{**GOOD_KERNEL, "backend": "triton"}]})
    with pytest.raises(TvmArtifactError, match=r"holds no TVM kernels \(was it built with --backend triton\?\)"):
        use_tvm_artifacts(triton_only)
    no_cubin = _manifest_folder(fake_gpu / "nocubin", manifest, cubin=False)
    with pytest.raises(TvmArtifactError, match="TVM kernel 'k' names k.cubin, which is not in the folder"):
        use_tvm_artifacts(no_cubin)
    no_launch = _manifest_folder(fake_gpu / "nolaunch", {**manifest, "kernels": [{**GOOD_KERNEL, "launch": {}}]})
    with pytest.raises(TvmArtifactError, match="TVM kernel 'k' lacks launch metadata, files or cases"):
        use_tvm_artifacts(no_launch)
    bad_case = _manifest_folder(fake_gpu / "case", {**manifest, "kernels": [{**GOOD_KERNEL, "cases": [{"M": 0}]}]})
    with pytest.raises(TvmArtifactError, match="malformed case"):
        use_tvm_artifacts(bad_case)
    good = _manifest_folder(fake_gpu / "good", manifest)
    with pytest.raises(TvmArtifactError):   # one bad folder in a list registers none of them
        use_tvm_artifacts([good, no_cubin])
    assert tvm_artifacts._FOLDERS == {}
    [entry] = use_tvm_artifacts([good])
    assert (entry.folder, entry.name, entry.arch, entry.case_m) == (good.resolve(), "k", "sm90", 1)


def test_backend_option_is_checked(fake_gpu):
    with pytest.raises(SpecError, match=r"backend 'cuda' is not available; expected one of \['auto', 'triton', 'tvm'\]"):
        set_backend("cuda")
    with pytest.raises(SpecError, match="backend 'TVM' is not available"):
        _layer(backend="TVM")
    q = _layer(backend="tvm")
    assert q.backend == "tvm" and "backend=tvm" in repr(q)
    q.backend = None
    assert q.backend is None


# -- selection from a real artifact folder -------------------------------------------------------------------
@needs_build
def test_tvm_for_built_buckets_triton_once_for_the_others(fake_gpu, folder, caplog):
    manifest = json.loads((folder / "manifest.json").read_text())
    names = {k["cases"][0]["M"]: k["name"] for k in manifest["kernels"] if k["backend"] == "tvm"}
    assert set(names) == {1, 16} and manifest["arch"] == "sm90"
    served = use_tvm_artifacts(folder)
    assert sorted((e.case_m, e.name) for e in served) == sorted(names.items())
    q = _layer(backend="tvm")
    for M, bucket in ((1, 1), (9, 16), (16, 16)):
        d = q.dispatch(M)
        assert (d.kind, d.bucket, d.kernel, d.source) == ("tvm", bucket, names[bucket], f"artifact:{folder}"), M
        assert q.dispatch(M, torch.bfloat16).kind == "tvm"
    assert q.dispatch(16, torch.float32).kind == "reference"   # the cubins take fp16/bf16 only
    # the forward reaches the cubin launcher, which checks x's device first (a real launch: the GPU test)
    with pytest.raises(ValueError, match=f"{names[1]}: x must be on a CUDA device"):
        q(torch.randn(1, K).half())
    # M bucket 4 has no TVM kernel: Triton runs (interpreter), said once
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(1)).half()
    with caplog.at_level(logging.WARNING, logger="quantcc.runtime"):
        y = q(x)
        q(x)
        d = q.dispatch(3)
    assert d.kind == "triton" and d.bucket == 4
    assert _tvm_warnings(caplog) == [(f"quantcc: no TVM kernel for gptq N={N} K={K} at M bucket 4 (registered for M "
                                      f"buckets [1, 16]); using Triton. Build it with `python -m codegen build gptq "
                                      f"--backend tvm --shapes {N},{K} --batches 4`.")]
    assert ((y.double() - _ref(q, x)).norm() / _ref(q, x).norm()).item() < REL_TOL[torch.float16]


@needs_build
def test_backend_preference_and_the_custom_op(fake_gpu, folder, caplog):
    use_tvm_artifacts(folder)
    q = _layer()
    assert q.dispatch(1).kind == "triton"   # "auto" without a measured TVM win (test_auto_needs_a_measured_win)
    set_backend("tvm")
    assert q.dispatch(1).kind == "tvm"
    set_backend("triton")
    assert q.dispatch(1).kind == "triton"
    q.backend = "tvm"                      # the layer's preference wins over the process-wide one
    assert q.dispatch(1).kind == "tvm"
    assert _layer(backend="triton").dispatch(1).kind == "triton"
    set_backend("auto")
    # the op torch.compile traces carries the layer's preference
    x = torch.randn(1, K, generator=torch.Generator().manual_seed(2)).half()

    def via_op(backend):
        return torch.ops.quantcc.quant_linear(x, list(q.tensors.values()), q._names_arg, q.bias, q._spec_key, N,
                                              backend)
    with pytest.raises(ValueError, match="x must be on a CUDA device"):
        via_op("tvm")
    y = via_op("triton")
    assert ((y.double() - _ref(q, x)).norm() / _ref(q, x).norm()).item() < REL_TOL[torch.float16]
    # backend "tvm" for a shape no folder serves: Triton, said once
    caplog.clear()
    other = QuantLinear.from_quantized(synthetic_quantized(ir.get_format("gptq"), N, 2 * K, seed=1), backend="tvm")
    with caplog.at_level(logging.WARNING, logger="quantcc.runtime"):
        assert other.half().dispatch(1).kind == "triton" and other.dispatch(2).kind == "triton"
    assert _tvm_warnings(caplog) == [(f"quantcc: backend 'tvm': no TVM artifact registered for gptq N={N} K={2 * K} "
                                      f"(runtime.use_tvm_artifacts / QUANTCC_TVM_ARTIFACTS); using Triton")]


@needs_build
def test_another_arch_is_refused(fake_gpu, folder, monkeypatch):
    use_tvm_artifacts(folder)
    monkeypatch.setattr(op, "_device_arch", lambda device: "sm80")
    q = _layer()
    with pytest.raises(TvmArtifactError, match=rf"artifacts for this layer \(N={N}, K={K}\) in \['{folder}'\] were "
                                               rf"built for \['sm90'\] but the device is sm80; rebuild them with "
                                               rf"`--arch sm80`"):
        q.dispatch(1)
    assert _layer(backend="triton").dispatch(1).kind == "triton"


@needs_build
def test_env_knob(fake_gpu, folder, monkeypatch, tmp_path):
    q = _layer(backend="tvm")
    assert q.dispatch(1).kind == "triton"
    copy = shutil.copytree(folder, tmp_path / "copy")
    monkeypatch.setenv("QUANTCC_TVM_ARTIFACTS", f"{tmp_path / 'absent'}")
    with pytest.raises(TvmArtifactError, match=r"QUANTCC_TVM_ARTIFACTS: TVM artifact folder .*absent does not exist"):
        q.dispatch(1)
    monkeypatch.setenv("QUANTCC_TVM_ARTIFACTS", f"{copy}:{folder}")   # the first folder that serves a call wins
    d = q.dispatch(1)
    assert (d.kind, d.source) == ("tvm", f"artifact:{copy.resolve()}")
    use_tvm_artifacts(folder)                                         # registered folders come first
    assert q.dispatch(16).source == f"artifact:{folder}"
    tvm_artifacts.clear_tvm_artifacts()
    monkeypatch.delenv("QUANTCC_TVM_ARTIFACTS")
    assert q.dispatch(1).kind == "triton"


@needs_build
def test_auto_needs_a_measured_win(fake_gpu, folder, caplog):
    """backend "auto": a registered TVM kernel runs only where this GPU's tuning database has a TVM entry for its
    bucket with the artifact's kernel hash that beat the bucket's Triton entry (runtime.tvm_artifacts.choose)."""
    from autotune.db import entry_key, make_entry, merge_entries
    from codegen.triton_backend import tuned_kernel_hash
    from fake_gpu import HEADER
    from runtime import tuning
    served = {e.case_m: e for e in use_tvm_artifacts(folder)}
    q = _layer()
    with caplog.at_level(logging.WARNING, logger="quantcc.runtime"):
        assert q.dispatch(1).kind == "triton"
    assert any("backend 'auto': TVM kernels are registered for gptq" in m and "no tuning entry for backend tvm" in m
               for m in _tvm_warnings(caplog))
    spec, cfg = q.spec, ir.KernelConfig(block_m=1, block_n=64, block_k=128, split_k=1, num_warps=4, num_stages=3)

    def measured(tvm_us, triton_us):
        path = tuning.DB_DIR / f"{tuning.gpu_slug(HEADER['gpu'])}.json"
        path.unlink(missing_ok=True)
        merge_entries(path, HEADER, {
            entry_key(spec.key, "tvm", N, K, 1): make_entry("gptq", {}, cfg, tvm_us, None, HEADER,
                                                            kernel_hash=served[1].kernel_hash),
            entry_key(spec.key, "triton", N, K, 1): make_entry("gptq", {}, cfg, triton_us, None, HEADER,
                                                               kernel_hash=tuned_kernel_hash(spec, 1, N, K, cfg, "sm90"))})
        tuning._load_for.cache_clear()
        op._DISPATCH.clear()
        return q.dispatch(1)
    d = measured(5.0, 10.0)
    assert (d.kind, d.kernel, d.source) == ("tvm", served[1].name, f"artifact:{folder}")
    assert q.dispatch(16).kind == "triton"    # bucket 16 has no TVM entry
    d = measured(10.0, 5.0)
    assert (d.kind, d.source) == ("triton", "db")
