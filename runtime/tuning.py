"""Reading the per-GPU tuning database (the autotuner writes it: autotune/db.py).

File: autotune/db/<gpu slug>.json
{
  "schema": 1,
  "header": {"gpu": str, "capability": "9.0", "driver": str, "cuda": str, "torch": str, "triton": str,
             "tvm": str | null, "quantcc": str, "template_hash": str},
  "entries": {"<spec key>|<backend>|<N>|<K>|<M bucket>": {
      "format": str, "config": {KernelConfig fields}, "us": float, "kernel_hash": str,
      "runner_up": {"config": {...}, "us": float} | null, "tuned_at": ISO time}}
}
On load the header is compared with this machine: another GPU is a hard mismatch (the file is ignored);
another driver/CUDA/torch/triton/quantcc version is a soft mismatch (entries are used but marked stale, to be
re-tuned). Each entry carries the source hash of the exact kernel it timed (codegen.triton_backend.
tuned_kernel_hash: the rendered code for that spec, shape, M bucket, config and arch, header comments
excluded); at lookup the kernel is rendered again and an entry whose kernel differs, or that has no hash,
is ignored. So a template edit invalidates exactly the entries whose kernels it changes, and no other.

Backend "tvm" entries (autotune/tvm_candidates.py) have the same schema; their "kernel_hash" is the timed
artifact's (runtime.tvm_artifacts.kernel_hash: its cubin and launch metadata) and "artifact" names it. They
are matched against the registered artifacts, not re-rendered (`lookup_tvm`; the decision is
runtime.tvm_artifacts.choose)."""
from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from codegen.arch import arch_of_capability
from codegen.triton_backend import tuned_kernel_hash
from ir import FormatSpec, KernelConfig, SpecError

SCHEMA = 1
DB_DIR = Path(__file__).resolve().parent.parent / "autotune" / "db"
M_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
log = logging.getLogger("quantcc.runtime")


def m_bucket(M: int) -> int:
    """The documented M buckets: the smallest of 1, 2, 4, ..., 256 that is >= M; 512 stands for every M > 256."""
    if M < 1:
        raise ValueError(f"M = {M} is invalid; expected a positive number of rows")
    for b in M_BUCKETS:
        if M <= b:
            return b
    return 512


def gpu_slug(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def entry_key(spec_key: str, backend: str, N: int, K: int, bucket: int) -> str:
    return f"{spec_key}|{backend}|{N}|{K}|{bucket}"


@dataclass(frozen=True)
class Lookup:
    config: KernelConfig
    source: str          # "db" | "db-stale" | "heuristic"
    note: str = ""


HARD_KEYS = ("gpu",)
SOFT_KEYS = ("capability", "driver", "cuda", "torch", "triton", "quantcc")


def compare_headers(stored: dict, current: dict) -> tuple[list[str], list[str]]:
    """(hard mismatches, soft mismatches) as 'key: stored != current' strings."""
    hard = [f"{k}: {stored.get(k)!r} != {current.get(k)!r}" for k in HARD_KEYS if stored.get(k) != current.get(k)]
    soft = [f"{k}: {stored.get(k)!r} != {current.get(k)!r}" for k in SOFT_KEYS if stored.get(k) != current.get(k)]
    return hard, soft


def read_db(path: Path) -> dict:
    """Parse and validate a database file; raise ValueError naming the file and the problem."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"tuning database {path} is not valid JSON ({e}); delete it or re-run `python -m autotune sweep`") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("entries"), dict):
        raise ValueError(f"tuning database {path} has schema {data.get('schema') if isinstance(data, dict) else '?'}; "
                         f"expected {SCHEMA} with 'header' and 'entries'")
    return data


@functools.lru_cache(maxsize=8)
def _load_for(gpu: str, current_json: str, db_dir: str) -> tuple[dict, bool, str]:
    """(entries, stale, note) for this GPU; cached per (gpu, header, folder)."""
    current = json.loads(current_json)
    path = Path(db_dir) / f"{gpu_slug(gpu)}.json"
    if not path.exists():
        return {}, False, f"no tuning database {path}"
    try:
        data = read_db(path)
    except ValueError as e:  # a corrupt file must not stop a model from loading: use the heuristic, loudly
        return {}, False, f"{e}; using the heuristic default configs"
    hard, soft = compare_headers(data.get("header", {}), current)
    if hard:
        return {}, False, f"tuning database {path} ignored (hard mismatch: {'; '.join(hard)})"
    return data["entries"], bool(soft), ("stale: " + "; ".join(soft)) if soft else ""


_warned: set = set()


def lookup_config(spec: FormatSpec, N: int, K: int, M: int, header: dict, backend: str = "triton",
                  db_dir: Path | None = None) -> Lookup | None:
    """The tuned config for (spec, backend, N, K, bucket(M)) on the GPU `header` describes, or None. For the gemv
    buckets (M <= 4) it is bucket 8's gemm config instead where the database timed that one faster (at M = 8)."""
    entries, stale, note = _load_for(header.get("gpu", ""), json.dumps(header, sort_keys=True), str(db_dir or DB_DIR))
    bucket = m_bucket(M)
    e = entries.get(entry_key(spec.key, backend, N, K, bucket))
    cfg = None
    if e is not None:
        try:
            cfg = KernelConfig(**e["config"])
        except (TypeError, ValueError) as err:
            log.warning("quantcc: tuning entry for %s N=%d K=%d M-bucket %d is invalid (%s); using the heuristic",
                        spec.name, N, K, bucket, err)
            return None
        arch = header.get("arch") or arch_of_capability(*(int(v) for v in str(header.get("capability", "0.0")).split(".")))
        if not entry_matches_kernel(e, spec, bucket, N, K, cfg, arch):
            note = (f"tuning entry for {spec.name} N={N} K={K} M-bucket {bucket} timed another kernel than the "
                    f"current templates render; re-tune it with `python -m autotune sweep`")
            e = None
    if e is None:
        if note and note not in _warned:
            _warned.add(note)
            log.warning("quantcc: %s", note)
        return None
    if bucket <= 4 and backend == "triton":   # gemv buckets: bucket 8's gemm kernel, where the database timed it faster even at M = 8
        gemm = _gemm_above(entries, spec, backend, N, K, arch, e)
        if gemm is not None:
            return Lookup(gemm[0], "db-stale" if stale else "db", gemm[1])
    return Lookup(cfg, "db-stale" if stale else "db", note)


GEMM_BUCKET = 8   # the smallest gemm bucket (codegen.arch.kernel_family)


def _gemm_above(entries: dict, spec: FormatSpec, backend: str, N: int, K: int, arch: str,
                gemv: dict) -> tuple[KernelConfig, str] | None:
    """(bucket 8's gemm config, a note) when its valid entry is faster than the gemv entry `gemv`, else None. A
    gemm tile of block_m >= 16 reads the same weights and does the same work for 2, 4 or 8 rows, so its time at
    M = 8 bounds its time at M <= 4; the tuner searches each family within its own buckets."""
    e8 = entries.get(entry_key(spec.key, backend, N, K, GEMM_BUCKET))
    if e8 is None or not isinstance(e8.get("us"), (int, float)) or not isinstance(gemv.get("us"), (int, float)):
        return None
    if e8["us"] >= gemv["us"]:
        return None
    try:
        cfg8 = KernelConfig(**e8["config"])
    except (TypeError, ValueError):
        return None
    if cfg8.block_m < 16 or not entry_matches_kernel(e8, spec, GEMM_BUCKET, N, K, cfg8, arch):
        return None
    return cfg8, (f"bucket {GEMM_BUCKET}'s gemm config {cfg8.label} ({e8['us']:.1f} us at M={GEMM_BUCKET}) is faster "
                  f"than this bucket's gemv entry ({gemv['us']:.1f} us)")


@dataclass(frozen=True)
class TvmTuned:
    """A backend-"tvm" entry for a call's bucket: the hash of the artifact it timed, its time, and the time of
    the same bucket's Triton entry when that one is valid (None otherwise)."""

    kernel_hash: str
    us: float
    triton_us: float | None
    stale: bool

    @property
    def beats_triton(self) -> bool:
        return self.triton_us is not None and self.us < self.triton_us


def lookup_tvm(spec: FormatSpec, N: int, K: int, M: int, header: dict, db_dir: Path | None = None) -> TvmTuned | None:
    """The TVM entry for (spec, N, K, bucket(M)) in this GPU's database (None when there is none or it is
    malformed), with the Triton entry's time when `lookup_config` accepts that entry."""
    db = str(db_dir or DB_DIR)
    entries, stale, _ = _load_for(header.get("gpu", ""), json.dumps(header, sort_keys=True), db)
    bucket = m_bucket(M)
    e = entries.get(entry_key(spec.key, "tvm", N, K, bucket))
    try:
        digest, us = str(e["kernel_hash"]), float(e["us"])
    except (TypeError, KeyError, ValueError):
        return None
    triton_us = None
    if lookup_config(spec, N, K, M, header, "triton", Path(db)) is not None:
        try:
            triton_us = float(entries[entry_key(spec.key, "triton", N, K, bucket)]["us"])
        except (KeyError, TypeError, ValueError):
            triton_us = None
    return TvmTuned(digest, us, triton_us, stale)


def entry_matches_kernel(entry: dict, spec: FormatSpec, bucket: int, N: int, K: int, cfg: KernelConfig,
                         arch: str) -> bool:
    """The entry timed the kernel the current templates render for its config (the autotuner re-tunes, and
    the runtime ignores, an entry that does not). A config the lowering now refuses is another kernel."""
    try:
        return entry.get("kernel_hash") == tuned_kernel_hash(spec, bucket, N, K, cfg, arch)
    except (SpecError, TypeError, ValueError):
        return False
