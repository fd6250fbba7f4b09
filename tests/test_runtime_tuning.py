"""Runtime side of the tuning DB: M buckets and per-entry kernel template hashes."""
import json

import pytest

import ir
from codegen.env import kernel_template_hash, template_hash
from ir import KernelConfig
from runtime import tuning

HEADER = {"gpu": "Test GPU", "capability": "9.0", "driver": "1", "cuda": "13.0", "torch": "x", "triton": "3.6.0",
          "tvm": None, "quantcc": "0.1.0", "template_hash": template_hash()}


def test_m_buckets():
    assert [tuning.m_bucket(m) for m in (1, 2, 3, 5, 16, 17, 256, 257, 10_000)] == [1, 2, 4, 8, 16, 32, 256, 512, 512]
    with pytest.raises(ValueError, match="M = 0"):
        tuning.m_bucket(0)


def test_template_hashes_are_per_kernel():
    assert kernel_template_hash("triton/decode/gptq.jinja") != kernel_template_hash("triton/decode/bnb.jinja")
    # gptq.jinja imports _packed_affine.jinja: its hash covers the imported file too
    assert "triton/decode/_packed_affine.jinja" in __import__("codegen.env", fromlist=["_closure"])._closure(
        ["triton/decode/gptq.jinja"])


@pytest.mark.parametrize("stored_hash, found", [(None, True), ("current", True), ("0000", False)])
def test_entry_with_other_decode_templates_is_ignored(tmp_path, stored_hash, found):
    spec = ir.get_format("gptq")
    entry = {"format": "gptq", "config": KernelConfig(block_n=128).to_dict(), "us": 1.0}
    if stored_hash is not None:
        entry["kernel_hash"] = kernel_template_hash("triton/decode/gptq.jinja") if stored_hash == "current" else stored_hash
    key = tuning.entry_key(spec.key, "triton", 256, 512, 1)
    (tmp_path / f"{tuning.gpu_slug(HEADER['gpu'])}.json").write_text(
        json.dumps({"schema": tuning.SCHEMA, "header": HEADER, "entries": {key: entry}}))
    tuning._load_for.cache_clear()
    got = tuning.lookup_config(spec, 256, 512, 1, HEADER, db_dir=tmp_path)
    assert (got is not None and got.config.block_n == 128) == found
