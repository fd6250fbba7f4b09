"""Build-or-load generated Triton kernels at run time, cached on disk.

The cache folder is namespaced by quantcc version, arch and template hash; the file name is the kernel's
procedural name (which carries the spec key prefix and the config). Files are written atomically under a
lock with a double-checked load, so concurrent processes build a kernel once."""
from __future__ import annotations

import fcntl
import functools
import logging
from pathlib import Path
from types import ModuleType

from codegen import __version__
from codegen.arch import default_config
from codegen.artifacts import atomic_write
from codegen.env import kernel_template_hash
from codegen.plan import lower
from codegen.triton_backend import render_triton
from ir import FormatSpec, KernelConfig

from .envknobs import cache_dir, debug
from .loader import load_kernel_module

log = logging.getLogger("quantcc.runtime")


def _folder(arch: str, decode_template: str) -> Path:
    return cache_dir() / f"v{__version__}" / arch / kernel_template_hash(decode_template)


@functools.lru_cache(maxsize=512)
def get_kernel(spec: FormatSpec, M: int, N: int, K: int, arch: str, config: KernelConfig | None = None,
               family: str | None = None) -> ModuleType:
    """The generated module for (spec, M, N, K, arch, config); `config` defaults to the arch heuristic."""
    config = config or default_config(spec, (M, N, K), arch)
    plan = lower(spec, M, N, K, config, arch, family=family)
    folder = _folder(arch, plan.decode_template)
    path = folder / f"{plan.name}.py"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():  # double-checked: another process may have built it meanwhile
                atomic_write(path, render_triton(plan))
                if debug():
                    log.warning("quantcc: built %s (template %s, spec %s)", plan.name, plan.decode_template,
                                spec.key[:12])
    return load_kernel_module(path)
