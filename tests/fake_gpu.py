"""The CPU standing in for an sm90 CUDA device, for the runtime's dispatch tests: kernels run under
TRITON_INTERPRET=1 (conftest), the tuning database and kernel cache live in a temporary folder, and the
runtime's per-process caches (dispatch decisions, warnings, backend preference, TVM registry) start empty."""
from runtime import op, tuning, tvm_artifacts

HEADER = {"gpu": "Fake GPU 80GB", "capability": "9.0", "arch": "sm90", "driver": "1", "cuda": "13.0",
          "torch": "x", "triton": "3.6.0", "tvm": None, "quantcc": "0.1.0", "template_hash": "t"}


def install(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("QUANTCC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("QUANTCC_TVM_ARTIFACTS", raising=False)
    monkeypatch.setattr(op, "_on_gpu", lambda device: True)
    monkeypatch.setattr(op, "_device_arch", lambda device: "sm90")
    monkeypatch.setattr(op, "_device_header", lambda device: HEADER)
    monkeypatch.setattr(tuning, "DB_DIR", tmp_path / "db")
    monkeypatch.setattr(op, "_DISPATCH", {})
    monkeypatch.setattr(op, "_warned", set())
    monkeypatch.setattr(op, "_backend", "auto")
    monkeypatch.setattr(tvm_artifacts, "_FOLDERS", {})
    tuning._load_for.cache_clear()
