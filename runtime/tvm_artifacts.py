"""The registry of prebuilt TVM kernels QuantLinear may dispatch to.

TVM is not needed where the model runs: TVM kernels are built ahead on a build machine
(`python -m codegen build FORMAT --arch sm90 --backend tvm --shapes N,K --batches 1 16 128 --out DIR`,
TVM + nvcc) and only loaded here, through runtime/cubin.py (cuda.core). Nothing is ever built at run time.

Folders come from `use_tvm_artifacts(folder_or_folders)` (checked when registered) and from the
QUANTCC_TVM_ARTIFACTS knob (`path1:path2`, read at call time, checked at the first dispatch that reads it).
Each folder's manifest.json names its spec key, arch and, per TVM kernel, the (M, N, K) cases it was built
for. A case serves the calls in its M bucket (runtime.tuning.m_bucket): the kernels loop over any M, their
config was chosen for that M. Lookup order: the registered folders in registration order, then the
knob's folders; the first kernel for (spec key, N, K, M bucket) wins, and within a folder a case whose M is
the bucket itself wins over one that only falls in it. Re-registering a folder re-reads its manifest.

Measured choice (`choose`, what the runtime's dispatch calls): every registered kernel has a kernel hash
(`kernel_hash`: sha256 of its cubin and of the launch metadata that changes what it computes), and the
tuning database's backend-"tvm" entries (written by `python -m autotune sweep --backend tvm`,
autotune/tvm_candidates.py) record the hash of the artifact they timed. Backend "auto" runs a TVM kernel
only when this GPU's database has a TVM entry for the call's (format, N, K, M bucket), a registered kernel
has that entry's hash, and the entry beat the valid Triton entry of the same bucket; without those
measurements "auto" means Triton. Backend "tvm" runs the tuned kernel when it is registered, else the first
registered one (the order above). A TVM entry whose hash no registered kernel has is ignored (the folder was
rebuilt, or is another build).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ir import FormatSpec, SpecError

from .cubin import CubinKernel
from .envknobs import tvm_artifacts
from .tuning import lookup_tvm, m_bucket


class TvmArtifactError(ValueError):
    """An artifact folder that cannot be registered, or one built for another GPU arch."""


@dataclass(frozen=True)
class TvmKernel:
    """One registered TVM kernel and the case it serves."""

    folder: Path
    name: str
    arch: str
    format: str
    case_m: int
    kernel_hash: str = ""


# the launch metadata that changes what a cubin computes (with the cubin's bytes: the kernel hash)
HASHED_LAUNCH_KEYS = ("symbols", "params", "grid", "block", "dynamic_shared_bytes", "zero_init_y",
                      "input_transforms", "output_transforms", "x_dtypes")


def kernel_hash(folder: str | Path, kernel: dict) -> str:
    """sha256 of a manifest kernel's cubin bytes and its HASHED_LAUNCH_KEYS: what a tuning entry for a TVM
    kernel records, and what identifies a registered kernel as the one that was timed."""
    h = hashlib.sha256((Path(folder) / str(kernel["files"]["cubin"])).read_bytes())
    launch = kernel["launch"]
    h.update(json.dumps({k: launch.get(k) for k in HASHED_LAUNCH_KEYS}, sort_keys=True).encode())
    return h.hexdigest()


_LAUNCH_KEYS = ("symbols", "params", "grid", "block", "x_dtypes", "tensor_schema", "shape_params")
_FOLDERS: dict[Path, dict[tuple, list[TvmKernel]]] = {}   # registration order; (spec key, N, K, bucket) -> kernels
_generation = 0


def _build_hint(folder: Path) -> str:
    return f"build it with `python -m codegen build FORMAT --arch ARCH --backend tvm --out {folder}`"


def read_folder(folder: str | Path) -> dict[tuple, list[TvmKernel]]:
    """Parse and check one artifact folder; raise TvmArtifactError naming the folder and the problem."""
    folder = Path(folder).expanduser().resolve()
    path = folder / "manifest.json"
    if not folder.is_dir():
        raise TvmArtifactError(f"TVM artifact folder {folder} does not exist; {_build_hint(folder)}")
    if not path.is_file():
        subs = sorted(p.parent.name for p in folder.glob("*/manifest.json"))
        more = f" (its subfolders {subs} are artifact folders: register those)" if subs else f"; {_build_hint(folder)}"
        raise TvmArtifactError(f"no manifest.json in TVM artifact folder {folder}{more}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TvmArtifactError(f"{path} is not valid JSON ({e}); rebuild the folder") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("spec_key"), str) \
            or not isinstance(manifest.get("arch"), str) or not isinstance(manifest.get("kernels"), list):
        raise TvmArtifactError(f"{path} is not a quantcc artifact manifest (needs 'spec_key', 'arch' and a "
                               f"'kernels' list); rebuild the folder")
    fmt = str(manifest.get("format", "?"))
    table: dict[tuple, list[TvmKernel]] = {}
    for k in manifest["kernels"]:
        if not isinstance(k, dict) or k.get("backend") != "tvm":
            continue
        name = k.get("name")
        launch, files, cases = k.get("launch"), k.get("files"), k.get("cases")
        if not isinstance(launch, dict) or any(key not in launch for key in _LAUNCH_KEYS) \
                or not isinstance(files, dict) or not isinstance(cases, list) or not cases:
            raise TvmArtifactError(f"{path}: TVM kernel {name!r} lacks launch metadata, files or cases; rebuild the folder")
        cubin = folder / str(files.get("cubin"))
        if not cubin.is_file():
            raise TvmArtifactError(f"{path}: TVM kernel {name!r} names {cubin.name}, which is not in the folder")
        digest = kernel_hash(folder, k)
        for case in cases:
            if not isinstance(case, dict) or not all(isinstance(case.get(d), int) and case[d] > 0 for d in "MNK"):
                raise TvmArtifactError(f"{path}: TVM kernel {name!r} has a malformed case {case!r}")
            entry = TvmKernel(folder, name, manifest["arch"], fmt, case["M"], digest)
            table.setdefault((manifest["spec_key"], case["N"], case["K"], m_bucket(case["M"])), []).append(entry)
    if not table:
        raise TvmArtifactError(f"{path} holds no TVM kernels (was it built with --backend triton?); {_build_hint(folder)}")
    for kernels in table.values():
        kernels.sort(key=lambda e: e.case_m != m_bucket(e.case_m))   # a case at the bucket's own M first
    return table


def _as_list(folders) -> list:
    return [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)


def use_tvm_artifacts(folders: str | Path | Iterable[str | Path]) -> list[TvmKernel]:
    """Register one artifact folder or several (each is checked now: a missing or corrupt manifest raises
    TvmArtifactError). Returns what they serve, one TvmKernel per (kernel, case)."""
    global _generation
    tables = [(Path(f).expanduser().resolve(), read_folder(f)) for f in _as_list(folders)]
    for folder, table in tables:
        _FOLDERS[folder] = table
    _generation += 1
    load.cache_clear()   # a re-registered folder may have been rebuilt
    return [e for _, t in tables for es in t.values() for e in es]


def clear_tvm_artifacts() -> None:
    """Forget every folder registered with use_tvm_artifacts (the knob's folders stay while it is set)."""
    global _generation
    _FOLDERS.clear()
    _generation += 1


@functools.lru_cache(maxsize=8)
def _knob_tables(value: str) -> tuple[tuple[Path, dict], ...]:
    out = []
    for f in (p for p in value.split(os.pathsep) if p):
        try:
            out.append((Path(f).expanduser().resolve(), read_folder(f)))
        except TvmArtifactError as e:
            raise TvmArtifactError(f"QUANTCC_TVM_ARTIFACTS: {e}") from None
    return tuple(out)


def state() -> tuple:
    """Changes whenever what the registry holds may have changed (a dispatch cache key part)."""
    return _generation, tvm_artifacts()


def _tables() -> list[tuple[Path, dict]]:
    return list(_FOLDERS.items()) + [t for t in _knob_tables(tvm_artifacts()) if t[0] not in _FOLDERS]


def buckets_for(spec_key: str, N: int, K: int) -> dict[str, list[int]]:
    """{arch: sorted M buckets} that registered TVM kernels serve for (spec key, N, K)."""
    out: dict[str, set] = {}
    for _, table in _tables():
        for (key, n, k, bucket), kernels in table.items():
            if (key, n, k) == (spec_key, N, K):
                for e in kernels:
                    out.setdefault(e.arch, set()).add(bucket)
    return {a: sorted(b) for a, b in out.items()}


def select(spec_key: str, N: int, K: int, bucket: int, arch: str) -> TvmKernel | None:
    """The TVM kernel for the call, None when no folder has one for (spec key, N, K, bucket). Raises
    TvmArtifactError when folders have kernels for (spec key, N, K) but none for the device's arch."""
    have = buckets_for(spec_key, N, K)
    if have and arch not in have:
        folders = sorted({str(f) for f, t in _tables() if any(key[:3] == (spec_key, N, K) for key in t)})
        raise TvmArtifactError(f"the TVM artifacts for this layer (N={N}, K={K}) in {folders} were built for "
                               f"{sorted(have)} but the device is {arch}; rebuild them with `--arch {arch}`, or "
                               f"unregister them (runtime.clear_tvm_artifacts / QUANTCC_TVM_ARTIFACTS)")
    for _, table in _tables():
        for e in table.get((spec_key, N, K, bucket), ()):
            if e.arch == arch:
                return e
    return None


def _registered(spec_key: str, N: int, K: int, bucket: int, arch: str) -> list[TvmKernel]:
    return [e for _, table in _tables() for e in table.get((spec_key, N, K, bucket), ()) if e.arch == arch]


@dataclass(frozen=True)
class TvmChoice:
    """What `choose` decided: the kernel to run (None: Triton runs) and, when it matters, a note to log once
    under `note_key`."""

    kernel: TvmKernel | None
    note: str = ""
    note_key: tuple = ()


def choose(spec: FormatSpec, N: int, K: int, bucket: int, arch: str, backend: str, header: dict,
           db_dir: Path | None = None) -> TvmChoice:
    """The TVM kernel a call with backend "auto" or "tvm" runs, decided as the module docstring says (header:
    this GPU's runtime.device.machine_header, for the tuning database). Raises TvmArtifactError when folders
    have kernels for (spec, N, K) but none for `arch`."""
    have = buckets_for(spec.key, N, K)
    select(spec.key, N, K, bucket, arch)   # refuses another arch's artifacts
    kernels = _registered(spec.key, N, K, bucket, arch)
    if not kernels:
        if have:
            return TvmChoice(None, f"no TVM kernel for {spec.name} N={N} K={K} at M bucket {bucket} (registered "
                                   f"for M buckets {have[arch]}); using Triton. Build it with `python -m codegen "
                                   f"build {spec.name} --backend tvm --shapes {N},{K} --batches {bucket}`.",
                             ("tvm-bucket", spec.key, N, K, bucket))
        if backend == "tvm":
            return TvmChoice(None, f"backend 'tvm': no TVM artifact registered for {spec.name} N={N} K={K} "
                                   f"(runtime.use_tvm_artifacts / QUANTCC_TVM_ARTIFACTS); using Triton",
                             ("tvm-none", spec.key, N, K))
        return TvmChoice(None)
    tuned = lookup_tvm(spec, N, K, bucket, header, db_dir)
    timed = next((e for e in kernels if tuned is not None and e.kernel_hash == tuned.kernel_hash), None)
    if backend == "tvm":
        return TvmChoice(timed or kernels[0])
    why = ("no tuning entry for backend tvm" if tuned is None else
           f"the tuned TVM kernel (hash {tuned.kernel_hash[:12]}) is not among the registered ones, whose "
           f"hashes differ" if timed is None else
           "no valid Triton entry to compare with" if tuned.triton_us is None else
           f"Triton is faster ({tuned.triton_us:.2f} us vs TVM {tuned.us:.2f} us)" if not tuned.beats_triton else "")
    if not why:
        return TvmChoice(timed)
    return TvmChoice(None, f"backend 'auto': TVM kernels are registered for {spec.name} N={N} K={K} M bucket "
                           f"{bucket} but {why}; using Triton (`python -m autotune sweep --backend tvm "
                           f"--tvm-candidates DIR` measures them)", ("tvm-auto", spec.key, N, K, bucket))


@functools.lru_cache(maxsize=None)
def load(entry: TvmKernel) -> CubinKernel:
    """The launcher for a registered kernel (cached: the cubin is loaded once per device at its first launch)."""
    manifest = json.loads((entry.folder / "manifest.json").read_text())
    for k in manifest["kernels"]:
        if k.get("backend") == "tvm" and k.get("name") == entry.name:
            return CubinKernel(entry.folder, k)
    raise SpecError(f"{entry.folder}/manifest.json no longer has TVM kernel {entry.name!r}; re-register the folder")
