"""Triton backend: render a KernelPlan to a standalone .py file (imports only torch and triton)."""
from __future__ import annotations

import functools
import hashlib

from ir import FormatSpec, KernelConfig

from .env import kernel_template_hash, render
from .plan import KernelPlan, lower


def template_for(plan: KernelPlan) -> str:
    return f"triton/{plan.family}.py.jinja"


def render_triton(plan: KernelPlan) -> str:
    name = template_for(plan)
    src = render(name, plan=plan, template_name=name, template_hash=kernel_template_hash(plan.decode_template))
    compile(src, f"<{plan.name}.py>", "exec")  # a template bug shows here, at build time, with the kernel name
    return src


TRANSFORMS_BEGIN = "# --- transform helpers: config-independent"
TRANSFORMS_END = "# --- end transform helpers ---"


def kernel_source_hash(src: str) -> str:
    """sha256 (16 hex) of a generated kernel's code without its header comments (which name the generator
    version and template hashes) and without its transform helpers (the input / output Hadamard between the
    TRANSFORMS_BEGIN and TRANSFORMS_END lines: the same code for every config of a problem, so it cannot change
    which config wins): two renders with the same hash run the same kernel."""
    lines = src.splitlines()
    start = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    lines = lines[start:]
    begin = next((i for i, line in enumerate(lines) if line.startswith(TRANSFORMS_BEGIN)), None)
    if begin is not None:
        end = next((i for i, line in enumerate(lines) if line.startswith(TRANSFORMS_END)), None)
        if end is None or end < begin:
            raise ValueError(f"kernel source has {TRANSFORMS_BEGIN!r} without a following {TRANSFORMS_END!r}")
        lines = lines[:begin] + lines[end + 1:]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1024)
def tuned_kernel_hash(spec: FormatSpec, M: int, N: int, K: int, config: KernelConfig, arch: str) -> str:
    """The source hash of the kernel the runtime builds for (spec, M, N, K, config, arch): what a tuning
    database entry records, so an entry is used only while the kernel it timed is byte-for-byte the one
    that would run (any template edit that changes this kernel, and only such an edit, invalidates it)."""
    return kernel_source_hash(render_triton(lower(spec, M, N, K, config, arch)))
