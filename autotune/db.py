"""Writing the per-GPU tuning database (the read side, and the schema, are runtime.tuning's).

File: autotune/db/<gpu slug>.json, schema 1 as runtime/tuning.py documents it. Entries written here
carry, besides the fields the runtime reads (format, config, us, runner_up, tuned_at), compatible
extras: "options" (the format's non-default options, so a stale entry can be rebuilt and re-tuned),
"M" (the M it was timed at), "family", "default" ({"config", "us"}: the heuristic default timed in the
same run), "tried" / "failed" (candidate counts), "tuning_s", and "tuned_with": the soft header fields
(capability, driver, CUDA, torch, triton, quantcc versions) of the machine that measured it.

Header policy on write (`merge_entries`):
- no file yet: the header is this machine's.
- hard mismatch (another GPU name): the write is REFUSED with `HeaderMismatch`. Template edits are not a
  file-level matter: every entry carries the source hash of the kernel it timed and is ignored (and
  re-tuned by the next sweep) once the templates render that kernel differently.
  The runtime ignores such a file wholesale, so merging new entries into it would leave them invisible
  behind the old header, or, with a new header, resurrect the old entries for kernels they were not
  measured on. `fresh=True` (`sweep --fresh`) replaces the file with this machine's header and only the
  new entries (the old file stays in git history).
- soft mismatch (same GPU, other driver/CUDA/torch/triton/quantcc): entries are merged;
  every entry keeps its own "tuned_with". The file header becomes this machine's only when every entry
  was tuned with it; until then it keeps the older soft fields, so the runtime keeps reporting the file
  as stale ("db-stale") until `sweep --retune-stale` has re-measured the old entries.
- a corrupt file (invalid JSON, wrong schema) is never overwritten silently: `DatabaseError`, unless fresh.

Concurrency: read-merge-write happens under an exclusive flock on the database folder (no lock file
to commit by accident), the new content goes to a temporary file in the same folder, is fsynced and
renamed over the old one with os.replace, so readers see either the old or the new file, and two
processes writing different entries both keep theirs."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from ir import KernelConfig
from runtime.tuning import DB_DIR, SCHEMA, SOFT_KEYS, compare_headers, entry_key, gpu_slug, read_db

__all__ = ["DatabaseError", "HeaderMismatch", "db_path", "entry_key", "is_stale", "load", "load_for_write",
           "make_entry", "merge_entries", "soft_fields", "stale_reasons"]


class DatabaseError(ValueError):
    pass


class HeaderMismatch(DatabaseError):
    pass


def db_path(gpu: str, db_dir: str | Path | None = None) -> Path:
    return Path(db_dir or DB_DIR) / f"{gpu_slug(gpu)}.json"


def soft_fields(header: dict) -> dict:
    return {k: header.get(k) for k in SOFT_KEYS}


def load(path: Path) -> dict | None:
    """The validated database at `path`, or None when there is none; DatabaseError when it is corrupt."""
    if not path.exists():
        return None
    try:
        return read_db(path)
    except ValueError as e:
        raise DatabaseError(str(e)) from e


def load_for_write(path: Path, header: dict) -> dict | None:
    """The database at `path` if this machine may add to it (None when there is none); raises
    DatabaseError for a corrupt file and HeaderMismatch for another GPU."""
    try:
        data = load(path)
    except DatabaseError as e:
        raise DatabaseError(f"{e}. Nothing was written; fix or delete the file, or pass --fresh to "
                            f"start a new database for this GPU") from e
    if data is not None:
        hard, _ = compare_headers(data.get("header", {}), header)
        if hard:
            raise HeaderMismatch(
                f"{path} was tuned for another GPU ({'; '.join(hard)}); the runtime "
                f"ignores it on this machine. Nothing was written; pass --fresh to replace it with a new "
                f"database for this machine (the old one stays in git history)")
    return data


def stale_reasons(entry: dict, file_header: dict, current: dict) -> list[str]:
    """Soft fields the entry was tuned with that differ from `current` (empty: the entry is fresh)."""
    tuned = entry.get("tuned_with") or soft_fields(file_header)
    return [f"{k}: {tuned.get(k)!r} != {current.get(k)!r}" for k in SOFT_KEYS if tuned.get(k) != current.get(k)]


def is_stale(entry: dict, file_header: dict, current: dict) -> bool:
    return bool(stale_reasons(entry, file_header, current))


def make_entry(fmt: str, options: dict, config: KernelConfig, us: float, runner_up: tuple | None,
               header: dict, **extra) -> dict:
    """An entry in the runtime's schema plus the extras above; runner_up is (config, us) or None."""
    e = {
        "format": fmt, "options": dict(options), "config": config.to_dict(), "us": float(us),
        "runner_up": None if runner_up is None else {"config": runner_up[0].to_dict(), "us": float(runner_up[1])},
        "tuned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tuned_with": soft_fields(header),
    }
    e.update(extra)
    return e


def _check_entry(key: str, e: dict) -> None:
    try:
        KernelConfig(**e["config"])
        float(e["us"])
        str(e["format"])
    except (KeyError, TypeError, ValueError) as err:
        raise DatabaseError(f"refusing to write malformed tuning entry {key!r}: {err}") from err


@contextlib.contextmanager
def _locked(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _atomic_write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def merge_entries(path: Path, header: dict, entries: dict, fresh: bool = False) -> dict:
    """Add `entries` ({entry_key: entry}) to the database at `path` written by the machine `header`
    describes; returns the merged database. See the module docstring for the header policy."""
    for k, e in entries.items():
        _check_entry(k, e)
    path = Path(path)
    with _locked(path.parent):
        old = None if fresh else load_for_write(path, header)
        merged = dict(old["entries"]) if old else {}
        old_header = dict(old["header"]) if old else dict(header)
        for e in merged.values():  # make each entry's measuring versions explicit before the header moves
            e.setdefault("tuned_with", soft_fields(old_header))
        merged.update(entries)
        all_current = all(not is_stale(e, header, header) for e in merged.values())
        new_header = dict(header) if all_current else {**header, **soft_fields(old_header)}
        data = {"schema": SCHEMA, "header": {k: new_header.get(k) for k in sorted(new_header)},
                "entries": {k: merged[k] for k in sorted(merged)}}
        _atomic_write_json(path, data)
    return data

