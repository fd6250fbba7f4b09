"""The one module of quantcc that imports TVM (pinned: its Python API moved three times in 2026).

Everything TVM-specific the backend needs goes through the few functions here: parse TVMScript text,
compile it for CUDA (to CUDA C source) or for the host CPU (`llvm`, for the CI correctness tests), and
call a CPU-compiled function on torch tensors. A different TVM version is refused with the pin, not
half-used. `tvm` is imported lazily, so importing codegen never needs it.
"""
from __future__ import annotations

import functools

from ir import SpecError

TVM_PIN = "0.27.0.post1"
INSTALL_HINT = f"pip install apache-tvm=={TVM_PIN} (or the project's `tvm` extra: pip install -e .[tvm])"


@functools.lru_cache(maxsize=1)
def _tvm():
    try:
        import tvm
        import tvm.script  # noqa: F401  (the TVMScript parser registers the tirx dialect)
    except ImportError as e:
        raise SpecError(f"the TVM backend needs apache-tvm=={TVM_PIN}, which is not importable ({e}); "
                        f"{INSTALL_HINT}") from None
    if tvm.__version__ != TVM_PIN:
        raise SpecError(f"the TVM backend is pinned to apache-tvm=={TVM_PIN} (TVMScript dialect tvm.script.tirx, "
                        f"JSON-dict targets); found {tvm.__version__}. {INSTALL_HINT}")
    return tvm


def unavailable_reason() -> str:
    """'' when the pinned TVM is importable, else why not (for pytest skip reasons)."""
    try:
        _tvm()
    except SpecError as e:
        return str(e)
    return ""


def version() -> str:
    return _tvm().__version__


def _target(kind: str, arch: str | None = None):
    tvm = _tvm()
    if kind == "cuda":
        return tvm.target.Target({"kind": "cuda", "arch": arch})
    if kind == "llvm":
        return tvm.target.Target({"kind": "llvm", "opt-level": 0})
    raise SpecError(f"TVM target kind {kind!r} is invalid; expected 'cuda' or 'llvm'")


def parse(module_source: str, label: str):
    """TVMScript text of an `@I.ir_module class Module:` (no import lines) -> IRModule.

    Parse errors come back as SpecError with TVM's diagnostic (file label, line, caret)."""
    tvm = _tvm()
    try:
        return tvm.script.from_source(module_source)
    except (tvm.error.DiagnosticError, SyntaxError) as e:
        raise SpecError(f"TVMScript of {label} does not parse:\n{e}") from None


def compile_cuda(module_source: str, label: str, arch: str) -> str:
    """TVMScript -> CUDA C source of all device kernels in the module (TVM's codegen; no GPU needed)."""
    tvm = _tvm()
    mod = parse(module_source, label)
    try:
        lib = tvm.compile(mod, target=_target("cuda", arch))
    except RuntimeError as e:  # TVM 0.27's build errors (tvm.error.InternalError, ...) are RuntimeErrors
        raise SpecError(f"TVM cannot build {label} for cuda/{arch}: {str(e).strip().splitlines()[-1]}") from None
    return lib.mod.imports[0].inspect_source()


def compile_llvm(module_source: str, label: str):
    """TVMScript -> a CPU module; its functions are looked up by global symbol with `function`."""
    tvm = _tvm()
    mod = parse(module_source, label)
    try:
        return tvm.compile(mod, target=_target("llvm"))
    except RuntimeError as e:
        raise SpecError(f"TVM cannot build {label} for llvm: {str(e).strip().splitlines()[-1]}") from None


def call(lib, symbol: str, *args) -> None:
    """Call a CPU-compiled TVM function: torch CPU tensors travel by DLPack (zero copy), ints as is."""
    tvm = _tvm()
    conv = [tvm.runtime.from_dlpack(a) if hasattr(a, "__dlpack__") else a for a in args]
    lib[symbol](*conv)
