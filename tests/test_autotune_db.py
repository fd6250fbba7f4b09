"""Tuning database write side: merge, header policy (hard / soft mismatch), corrupt files, concurrent writers,
and what the runtime's reader (runtime.tuning.lookup_config) makes of each case."""
import json
import multiprocessing
import os

import pytest

import ir
from autotune.db import (
    DatabaseError,
    HeaderMismatch,
    db_path,
    entry_key,
    is_stale,
    load,
    make_entry,
    merge_entries,
)
from codegen.triton_backend import tuned_kernel_hash
from ir import KernelConfig
from runtime import tuning

HEADER = {"gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0", "arch": "sm90", "driver": "580.65",
          "cuda": "13.0", "torch": "2.11.0+cu130", "triton": "3.6.0", "tvm": None, "quantcc": "0.1.0",
          "template_hash": "0123456789abcdef"}
SPEC = ir.get_format("gptq")
CFG = KernelConfig(block_m=1, block_n=128, block_k=128, split_k=4, num_warps=4, num_stages=3)
RUNNER = KernelConfig(block_m=1, block_n=64, block_k=128, split_k=8, num_warps=4, num_stages=3)


def _entry(header=HEADER, us=12.5, cfg=CFG, bucket=1):
    # the hash of the kernel the runtime renders for this entry: without it the runtime ignores the entry
    return make_entry("gptq", {}, cfg, us, (RUNNER, us * 1.1), header, M=bucket, family="gemv",
                      kernel_hash=tuned_kernel_hash(SPEC, bucket, 4096, 4096, cfg, "sm90"))


def _key(N=4096, K=4096, bucket=1):
    return entry_key(SPEC.key, "triton", N, K, bucket)


def _lookup(header, tmp_path, M=1, N=4096, K=4096):
    tuning._load_for.cache_clear()   # the runtime caches a file per process; tests rewrite it
    return tuning.lookup_config(SPEC, N, K, M, header, db_dir=tmp_path)


def test_write_then_runtime_reads_it(tmp_path):
    path = db_path(HEADER["gpu"], tmp_path)
    assert path.name == "nvidia_h100_80gb_hbm3.json"
    data = merge_entries(path, HEADER, {_key(): _entry()})
    assert data["header"]["gpu"] == HEADER["gpu"] and data["schema"] == tuning.SCHEMA
    e = json.loads(path.read_text())["entries"][_key()]
    assert e["runner_up"]["config"] == RUNNER.to_dict() and e["tuned_with"]["triton"] == "3.6.0"
    hit = _lookup(HEADER, tmp_path)
    assert hit is not None and hit.config == CFG and hit.source == "db"
    assert _lookup(HEADER, tmp_path, M=2) is None                     # another bucket: not tuned
    assert _lookup(HEADER, tmp_path, N=8192) is None                  # another shape: not tuned
    # merging keeps old entries and replaces same-key ones
    merge_entries(path, HEADER, {_key(bucket=16): _entry(us=20.0)})
    merge_entries(path, HEADER, {_key(): _entry(us=11.0)})
    entries = load(path)["entries"]
    assert set(entries) == {_key(), _key(bucket=16)} and entries[_key()]["us"] == 11.0
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]   # no temporary files left behind


@pytest.mark.parametrize("field", ["gpu"], ids=["other_device"])
def test_hard_mismatch_is_ignored_and_never_merged(tmp_path, field):
    path = db_path(HEADER["gpu"], tmp_path)
    merge_entries(path, HEADER, {_key(): _entry()})
    other = dict(HEADER, **{field: "something else"})
    if field == "gpu":   # the same file name with another GPU name can only come from a hand-copied file
        other["gpu"] = HEADER["gpu"] + " "
    assert _lookup(other, tmp_path) is None                                   # the runtime ignores the file
    before = path.read_bytes()
    with pytest.raises(HeaderMismatch, match=f"{field}.*pass --fresh"):
        merge_entries(path, other, {_key(bucket=16): _entry(other)})
    assert path.read_bytes() == before                                       # nothing was written
    merge_entries(path, other, {_key(bucket=16): _entry(other)}, fresh=True)  # --fresh starts over
    data = load(path)
    assert data["header"] == dict(sorted(other.items())) and set(data["entries"]) == {_key(bucket=16)}


def test_soft_mismatch_keeps_entries_marked_stale_until_retuned(tmp_path):
    path = db_path(HEADER["gpu"], tmp_path)
    merge_entries(path, HEADER, {_key(): _entry(), _key(bucket=16): _entry()})
    newer = dict(HEADER, triton="3.7.0", driver="590.1")
    hit = _lookup(newer, tmp_path)
    assert hit is not None and hit.config == CFG and hit.source == "db-stale"   # used, but marked
    # re-tuning one entry with the newer stack: the file header keeps the old soft fields while
    # any entry is stale, so the runtime still says "stale"
    merge_entries(path, newer, {_key(): _entry(newer, us=10.0)})
    data = load(path)
    assert data["header"]["triton"] == "3.6.0"
    assert not is_stale(data["entries"][_key()], data["header"], newer)
    assert is_stale(data["entries"][_key(bucket=16)], data["header"], newer)
    assert _lookup(newer, tmp_path).source == "db-stale"
    # once every entry is re-tuned, the header moves to the new versions and the file is fresh again
    merge_entries(path, newer, {_key(bucket=16): _entry(newer)})
    data = load(path)
    assert data["header"]["triton"] == "3.7.0" and data["header"]["driver"] == "590.1"
    assert _lookup(newer, tmp_path).source == "db"
    assert _lookup(HEADER, tmp_path).source == "db-stale"                    # and the old stack sees it stale


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"schema": 99, "header": {}, "entries": {}}), "schema 99"),
    (json.dumps([1, 2]), "expected 1"),
])
def test_corrupt_or_wrong_schema_file_is_a_clear_error(tmp_path, content, match):
    path = db_path(HEADER["gpu"], tmp_path)
    path.write_text(content)
    with pytest.raises(DatabaseError, match=match):
        load(path)
    with pytest.raises(DatabaseError, match="Nothing was written.*--fresh"):
        merge_entries(path, HEADER, {_key(): _entry()})
    assert path.read_text() == content
    assert _lookup(HEADER, tmp_path) is None        # the runtime ignores it (warns, uses the heuristic)
    merge_entries(path, HEADER, {_key(): _entry()}, fresh=True)
    assert _lookup(HEADER, tmp_path).config == CFG


def test_malformed_entries_are_refused_on_write_and_skipped_on_read(tmp_path):
    path = db_path(HEADER["gpu"], tmp_path)
    with pytest.raises(DatabaseError, match="malformed tuning entry"):
        merge_entries(path, HEADER, {_key(): dict(_entry(), config={"block_m": 3})})
    assert not path.exists()
    bad = dict(_entry(), config={"block_m": 3, "block_n": 64})   # e.g. hand-edited: not a power of two
    path.write_text(json.dumps({"schema": tuning.SCHEMA, "header": HEADER, "entries": {_key(): bad}}))
    assert _lookup(HEADER, tmp_path) is None


def _writer(path, worker, count, header):
    for i in range(count):
        key = entry_key(SPEC.key, "triton", 1024 * (worker + 1), 128 * (i + 1), 1)
        merge_entries(path, header, {key: make_entry("gptq", {}, CFG, float(worker * 100 + i), None, header)})


def _reader(path, stop, errors):
    while not stop.is_set():
        if path.exists():
            try:
                tuning.read_db(path)
            except Exception as e:  # a torn write would show here
                errors.put(repr(e))


def test_concurrent_writers_keep_every_entry(tmp_path):
    path = db_path(HEADER["gpu"], tmp_path)
    ctx = multiprocessing.get_context("fork")
    stop, errors = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(path, stop, errors))
    reader.start()
    writers = [ctx.Process(target=_writer, args=(path, w, 12, HEADER)) for w in range(4)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    stop.set()
    reader.join(10)
    entries = load(path)["entries"]
    assert len(entries) == 4 * 12
    assert sorted(e["us"] for e in entries.values()) == sorted(float(w * 100 + i) for w in range(4) for i in range(12))
    assert errors.empty()
    assert sorted(os.listdir(tmp_path)) == [path.name]
