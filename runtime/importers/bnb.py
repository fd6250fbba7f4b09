"""bitsandbytes 4-bit (NF4 / FP4) state dicts into bnb_nf4 / bnb_fp4.

A serialized `Linear4bit` (transformers' bnb checkpoints, `QuantState.as_dict(packed=True)`) stores, per layer:
  <layer>.weight                                   packed codes, uint8 [N*K/2, 1] (other quant_storage dtypes
                                                   are byte views of the same data and are viewed back as uint8)
  <layer>.weight.absmax                            float32, or uint8 codes under double quant
  <layer>.weight.quant_map                         float32 [16]
  <layer>.weight.nested_absmax, .nested_quant_map  double quant only
  <layer>.weight.quant_state.bitsandbytes__<type>  uint8 bytes of a JSON object: quant_type, blocksize, dtype,
                                                   shape [N, K], and under double quant nested_blocksize,
                                                   nested_dtype and nested_offset (a float)
which map one to one onto the canonical tensors (nested_offset becomes the 0-d float32 tensor that
QuantState.from_dict makes of it). Only the packed serialization exists in safetensors files.
"""
from __future__ import annotations

import json

import torch

import ir
from ir import QuantizedTensor, SpecError

from .common import Imported, claim_biases, read_state_dict

_STATE = ".weight.quant_state.bitsandbytes__"


def _state(imp: Imported, key: str, blob: torch.Tensor) -> dict:
    try:
        state = json.loads(bytes(blob.to(torch.uint8).reshape(-1).tolist()))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError(f"{imp.source}: {key} is not the JSON bitsandbytes packs ({e})") from e
    if not isinstance(state, dict):
        raise SpecError(f"{imp.source}: {key} must hold a JSON object")
    return state


def _layer(imp: Imported, sd: dict, layer: str, qtype: str) -> QuantizedTensor:
    key = f"{layer}{_STATE}{qtype}"
    state = _state(imp, key, sd.pop(key))
    where = f"{imp.source}: layer {layer}"
    if state.get("quant_type") != qtype:
        raise SpecError(f"{where}: quant_state says quant_type {state.get('quant_type')!r} under key {key}")
    nested = f"{layer}.weight.nested_absmax" in sd
    if nested and (state.get("nested_blocksize") != 256 or state.get("nested_dtype") != "float32"
                   or "nested_offset" not in state):
        raise SpecError(f"{where}: nested quantization {state.get('nested_blocksize')=} {state.get('nested_dtype')=} "
                        f"is not bitsandbytes' (blocks of 256, float32, with nested_offset)")
    try:
        N, K = (int(v) for v in state["shape"])
        spec = ir.get_format(f"bnb_{qtype}", blocksize=int(state["blocksize"]), double_quant=nested)
    except (KeyError, TypeError, ValueError) as e:
        raise SpecError(f"{where}: quant_state lacks a valid shape/blocksize ({e})") from e
    names = ["weight", "absmax", "quant_map"] + (["nested_absmax", "nested_quant_map"] if nested else [])
    keys = [f"{layer}.weight"] + [f"{layer}.weight.{n}" for n in names[1:]]
    missing = [k for k in keys if k not in sd]
    if missing:
        raise SpecError(f"{where}: state dict lacks {missing}")
    t = {n: sd.pop(k) for n, k in zip(names, keys)}
    w = t["weight"]
    if w.dtype != torch.uint8:  # quant_storage other than uint8: the same bytes
        w = w.contiguous().view(torch.uint8)
    t["weight"] = w.reshape(-1, 1)
    if nested:
        t["nested_offset"] = torch.tensor(float(state["nested_offset"]), dtype=torch.float32)
    try:
        return QuantizedTensor(spec, (N, K), t)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from e


def from_bnb_state_dict(source) -> Imported:
    """Every bitsandbytes 4-bit layer of a state dict, .safetensors file or folder of shards (found by its
    packed quant_state key); other tensors pass through."""
    sd, label = read_state_dict(source, "bitsandbytes import")
    imp = Imported(source=label)
    for key in sorted(k for k in sd if _STATE in k):
        layer, _, qtype = key.partition(_STATE)
        if qtype not in ("nf4", "fp4"):
            raise SpecError(f"{label}: {key}: quant type {qtype!r} is not 4-bit NF4/FP4")
        imp.layers[layer] = _layer(imp, sd, layer, qtype)
    imp.tensors = sd
    return claim_biases(imp)
