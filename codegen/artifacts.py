"""Artifact folders: one generated file per kernel plus manifest.json, written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from ir import FormatSpec, KernelConfig, SpecError

from . import __version__
from .arch import default_config, get_arch
from .env import kernel_template_hash, template_hash
from .plan import KernelPlan, lower
from .triton_backend import render_triton, template_for

DEFAULT_SHAPES = ((4096, 4096),)
DEFAULT_BATCHES = (1, 16, 128)
BACKENDS = ("triton", "tvm")


def atomic_write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def plans_for(spec: FormatSpec, arch: str, shapes: Iterable[tuple[int, int]], batches: Iterable[int],
              config: KernelConfig | None = None) -> list[tuple[KernelPlan, list[dict]]]:
    """One plan per distinct (family, config); each lists the (M, N, K) cases it serves."""
    get_arch(arch)
    plans: dict[str, tuple[KernelPlan, list[dict]]] = {}
    for N, K in shapes:
        spec.check_shape(N, K)
        for M in batches:
            cfg = config or default_config(spec, (M, N, K), arch)
            plan = lower(spec, M, N, K, cfg, arch)
            plans.setdefault(plan.name, (plan, []))[1].append({"M": M, "N": N, "K": K})
    return list(plans.values())


def _kept_kernels(out: Path, spec: FormatSpec, arch: str, backend: str) -> list[dict]:
    """Kernels of the other backends in the folder's manifest, when it is for the same spec and arch."""
    path = out / "manifest.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    if old.get("spec_key") != spec.key or old.get("arch") != arch:
        return []
    return [k for k in old.get("kernels", []) if k.get("backend") != backend]


def build(spec: FormatSpec, arch: str, out_dir: str | Path, backend: str = "triton",
          shapes: Iterable[tuple[int, int]] = DEFAULT_SHAPES, batches: Iterable[int] = DEFAULT_BATCHES,
          config: KernelConfig | None = None) -> dict:
    """Write the artifact folder for one format and return the manifest. A folder holds one format and arch;
    building another backend into it keeps the kernels the other backends wrote there ("all" builds each)."""
    shapes, batches = list(shapes), list(batches)
    if backend == "all":
        for b in BACKENDS:
            manifest = build(spec, arch, out_dir, b, shapes, batches, config)
        return manifest
    if backend not in BACKENDS:
        raise SpecError(f"--backend {backend!r} is not available; expected one of {list(BACKENDS) + ['all']}")
    out = Path(out_dir)
    kernels = []
    planned = plans_for(spec, arch, shapes, batches, config)
    # --- TVM backend (codegen/tvm_backend.py): TVMScript -> CUDA C -> cubin + launch metadata per plan ---
    if backend == "tvm":
        from .tvm_backend import build_all
        kernels = build_all(spec, planned, out)
        planned = []
    # --- end TVM backend ---
    for plan, cases in planned:
        src = render_triton(plan)
        atomic_write(out / f"{plan.name}.py", src)
        kernels.append({
            "name": plan.name, "file": f"{plan.name}.py", "backend": "triton", "family": plan.family,
            "template": template_for(plan), "decode_template": plan.decode_template,
            "config": plan.config.to_dict(), "config_key": plan.config.key, "entry_point": "run",
            "tensors": list(plan.tensor_names), "cases": cases,
            "template_hash": kernel_template_hash(plan.decode_template),
        })
    manifest = {
        "generator": f"quantcc {__version__}", "format": spec.name, "spec": json.loads(spec.to_json()),
        "spec_key": spec.key, "arch": arch, "template_hash": template_hash(),
        "kernels": sorted(_kept_kernels(out, spec, arch, backend) + kernels, key=lambda k: BACKENDS.index(k["backend"])),
    }
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
