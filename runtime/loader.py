"""Import a generated kernel file (a standalone module: torch + triton only) by path."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_kernel_module(path: str | Path) -> ModuleType:
    """Import the generated `.py` at `path` under a name derived from its stem (cached in sys.modules
    per absolute path, so the same file is compiled once per process)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no generated kernel at {path}; run `python -m codegen build ...` first")
    mod_name = f"quantcc_generated.{path.stem}_{abs(hash(str(path))) & 0xFFFFFFFF:08x}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)  # triton.jit needs a real file for inspect.getsource
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module
