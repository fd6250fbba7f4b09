"""save_quantized / load_quantized: the end-to-end CPU flow (mixed-format recipe, save, load into a fresh model,
outputs identical; each format within a stated tolerance of the float model), and one clear error for each
way a file can be wrong (truncated, flipped bytes, wrong shapes and dtypes, unknown version, missing
layers or tensors, edited metadata). Corrupted files are made by editing a good one."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from runtime import SKIP, CheckpointError, QuantLinear, load_quantized, quantize_model, save_quantized
from runtime.checkpoint import _digest
from test_runtime_recipe import TinyLM

MIXED = {
    "lm_head": SKIP,                                   # tied to the embedding: stays 16-bit
    "*.layers.1.mlp.down_proj": ("gptq", {"bits": 3, "group_size": 64, "checkpoint": "v2"}),
    "*.self_attn.[qkv]_proj": "gptq",
    "*.self_attn.o_proj": "gguf_q4_0",
    "*.mlp.gate_proj": "bnb_nf4",
    "*.mlp.up_proj": ("bnb_fp4", {"double_quant": False}),
    "*.mlp.down_proj": "awq",
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, the quantized model, the float model) for a 2-layer TinyLM with tied lm_head and a mixed recipe."""
    float_model = TinyLM(tie=True)
    model = TinyLM(tie=True)
    report = quantize_model(model, MIXED)
    assert len(report.replaced) == 14 and list(report.skipped) == ["lm_head"]
    path = save_quantized(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
    return path, model, float_model


IDS = torch.tensor([[1, 5, 9, 33, 60], [2, 2, 7, 40, 63]])


def test_end_to_end_save_load_matches_exactly(saved):
    path, model, _ = saved
    fresh = load_quantized(lambda: TinyLM(tie=True, seed=123), path)
    kinds = {n: m.spec.name for n, m in fresh.named_modules() if isinstance(m, QuantLinear)}
    assert kinds == {n: m.spec.name for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight          # the tie survives
    with torch.no_grad():
        assert torch.equal(fresh(IDS), model(IDS))
    # into an existing module instance, and into a model built on the meta device
    other = load_quantized(TinyLM(tie=True, seed=7), path)
    with torch.device("meta"):
        meta_model = TinyLM(tie=True)
    meta_model = load_quantized(meta_model, path)
    with torch.no_grad():
        assert torch.equal(other(IDS), model(IDS)) and torch.equal(meta_model(IDS), model(IDS))


def test_metadata_carries_specs_versions_and_schema(saved):
    path, model, _ = saved
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    layers = json.loads(meta["quantcc.layers"])
    rec = layers["model.layers.1.mlp.down_proj"]
    assert rec["spec"]["name"] == "gptq" and dict(map(tuple, rec["spec"]["params"]))["bits"] == 3
    assert rec["spec_key"] == model.model.layers[1].mlp.down_proj.spec.key
    assert meta["quantcc.format_version"] == "1" and meta["quantcc.version"]
    schema = json.loads(meta["quantcc.schema"])
    assert schema["model.layers.0.self_attn.o_proj.blocks"] == [[128, 4 * 18], "uint8"]
    assert json.loads(meta["quantcc.aliases"]) == {"lm_head.weight": "model.embed_tokens.weight"}


# Per-format tolerance on ||logits - float logits|| / ||float logits|| for a one-layer TinyLM whose every
# linear but lm_head uses the format. Round-to-nearest on Gaussian weights leaves a relative weight error of
# about step / (sqrt(12) sigma): ~10% at 4 bits (minmax group 128: step ~ 5.4 sigma / 15; NF4 and Q4_0
# absmax blocks are close, FP4 ~12%), ~0.5% for Q8_0, ~50% at 2 bits. Measured with seed 0 the logit error
# is 1.05-1.15x the weight error (gptq/awq 0.114, nf4 0.107, fp4 0.138, q4_0 0.091, q8_0 0.0058, w2 0.51);
# the bounds are 1.5x those.
TOLERANCE = {"gptq": 0.17, "awq": 0.17, "bnb_nf4": 0.16, "bnb_fp4": 0.21, "gguf_q4_0": 0.14, "gguf_q8_0": 0.009,
             "eqat_w2g128": 0.75}


@pytest.mark.parametrize("fmt", sorted(TOLERANCE))
def test_each_format_within_tolerance_of_float_and_round_trips(fmt, tmp_path):
    float_model = TinyLM(n_layers=1)
    model = TinyLM(n_layers=1)
    quantize_model(model, {"lm_head": SKIP}, default=fmt)
    with torch.no_grad():
        ref, y = float_model(IDS), model(IDS)
        rel = ((y - ref).norm() / ref.norm()).item()
        assert rel < TOLERANCE[fmt], f"{fmt}: {rel:.4f}"
        fresh = load_quantized(TinyLM(n_layers=1, seed=5), save_quantized(model, tmp_path / "m.safetensors"))
        assert torch.equal(fresh(IDS), y)


# -- broken files ----------------------------------------------------------------------------------------
def _read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def _write(path, tensors, meta, restamp=True):
    """Save edited tensors; restamp=True keeps schema and digests consistent (so the deeper checks run)."""
    if restamp:
        meta = dict(meta, **{
            "quantcc.schema": json.dumps({k: [list(t.shape), str(t.dtype).removeprefix("torch.")]
                                          for k, t in tensors.items()}),
            "quantcc.digests": json.dumps({k: _digest(t) for k, t in tensors.items()})})
    save_file(tensors, str(path), metadata=meta)
    return path


def _load(path, n_layers=2):
    return load_quantized(lambda: TinyLM(tie=True, n_layers=n_layers), path)


def test_truncated_file(saved, tmp_path):
    data = saved[0].read_bytes()
    for cut in (len(data) - 100, 40, 3):
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="cannot read it as safetensors .* truncated, corrupted"):
            _load(p)


def test_flipped_byte_in_tensor_data(saved, tmp_path):
    data = bytearray(saved[0].read_bytes())
    data[-7] ^= 0x10
    p = tmp_path / "flip.safetensors"
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its sha256 digest; the file is corrupted"):
        _load(p)


def test_wrong_shape_and_dtype_of_a_quantized_tensor(saved, tmp_path):
    tensors, meta = _read(saved[0])
    key = "model.layers.0.self_attn.q_proj.qweight"
    bad = dict(tensors, **{key: tensors[key][:-1].clone()})
    with pytest.raises(CheckpointError, match=r"layer 'model.layers.0.self_attn.q_proj': gptq: tensor 'qweight' "
                                              r"has shape \(15, 128\)"):
        _load(_write(tmp_path / "shape.safetensors", bad, meta))
    key = "model.layers.0.mlp.gate_proj.absmax"
    bad = dict(tensors, **{key: tensors[key].to(torch.int16)})
    with pytest.raises(CheckpointError, match=r"layer 'model.layers.0.mlp.gate_proj': bnb_nf4: tensor 'absmax' "
                                              r"has shape .* dtype torch.int16"):
        _load(_write(tmp_path / "dtype.safetensors", bad, meta))
    key = "model.norm.weight"   # a plain tensor of the wrong shape
    bad = dict(tensors, **{key: torch.ones(3)})
    with pytest.raises(CheckpointError, match=r"tensors do not fit the model's shapes: model.norm.weight: "
                                              r"file \(3,\), model \(128,\)"):
        _load(_write(tmp_path / "plain.safetensors", bad, meta))


def test_schema_disagrees_with_stored_tensor(saved, tmp_path):
    tensors, meta = _read(saved[0])
    key = "model.layers.1.self_attn.k_proj.scales"
    bad = dict(tensors, **{key: tensors[key].float()})
    with pytest.raises(CheckpointError, match=f"tensor '{key}' is stored with shape .* dtype float32 but the "
                                              f"schema says .* dtype float16"):
        _load(_write(tmp_path / "schema.safetensors", bad, meta, restamp=False))


def test_unknown_format_version_and_foreign_files(saved, tmp_path):
    tensors, meta = _read(saved[0])
    with pytest.raises(CheckpointError, match=r"checkpoint format version '2' is unknown to quantcc .* reads \[1\]"):
        _load(_write(tmp_path / "v2.safetensors", tensors, dict(meta, **{"quantcc.format_version": "2"})))
    with pytest.raises(CheckpointError, match="no quantcc metadata; not written by runtime.save_quantized"):
        _load(_write(tmp_path / "plain.safetensors", tensors, {"format": "pt"}, restamp=False))
    with pytest.raises(CheckpointError, match="metadata quantcc.layers is not valid JSON"):
        _load(_write(tmp_path / "json.safetensors", tensors, dict(meta, **{"quantcc.layers": "{oops"})))
    with pytest.raises(CheckpointError, match=r"metadata lacks \['quantcc.digests'\]"):
        meta2 = {k: v for k, v in meta.items() if k != "quantcc.digests"}
        _load(_write(tmp_path / "nodigest.safetensors", tensors, meta2, restamp=False))


def test_edited_spec_is_caught(saved, tmp_path):
    tensors, meta = _read(saved[0])
    layers = json.loads(meta["quantcc.layers"])
    spec = layers["model.layers.0.self_attn.v_proj"]["spec"]
    spec["params"] = [[k, ("v2" if k == "checkpoint" else v)] for k, v in spec["params"]]  # v1 zeros read as v2
    meta = dict(meta, **{"quantcc.layers": json.dumps(layers)})
    with pytest.raises(CheckpointError, match="'model.layers.0.self_attn.v_proj': the stored spec does not hash"):
        _load(_write(tmp_path / "spec.safetensors", tensors, meta))


def test_model_and_file_must_hold_the_same_layers(saved, tmp_path):
    with pytest.raises(CheckpointError, match=r"layers \['model.layers.1.mlp.down_proj', "
                                              r".*'model.layers.1.self_attn.q_proj'.*\] are in "
                                              r"the checkpoint but the model has no such modules"):
        _load(saved[0], n_layers=1)

    def bigger():
        m = TinyLM(tie=True)
        m.extra = nn.LayerNorm(4)
        return m
    with pytest.raises(CheckpointError, match=r"missing from the file \['extra.bias', 'extra.weight'\]"):
        load_quantized(bigger, saved[0])

    def mismatched():
        m = TinyLM(tie=True)
        m.model.layers[0].self_attn.q_proj = nn.Linear(128, 64)
        return m
    with pytest.raises(CheckpointError, match=r"layer 'model.layers.0.self_attn.q_proj' is a quantized \(128, 128\) "
                                              r"linear in the checkpoint but Linear\(in_features=128, out_features=64"):
        load_quantized(mismatched, saved[0])
    with pytest.raises(CheckpointError, match="the factory returned int"):
        load_quantized(lambda: 3, saved[0])
