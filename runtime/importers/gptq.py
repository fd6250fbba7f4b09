"""GPTQ-family checkpoints (per-layer qweight / qzeros / scales / g_idx) into the gptq, autoround, awq and
eqat formats. The bytes are used as stored; the checkpoint's config picks the spec that reads them.

quantize_config.json (GPTQ, GPTQModel, AutoGPTQ) or config.json's quantization_config:
  bits, group_size, sym, desc_act          the format options (sym does not change decoding: zeros are stored)
  checkpoint_format  "gptq" (v1: zero points stored minus one; also when absent) | "gptq_v2" (stored as is);
                     marlin / bitblas / ipex / qqq repack the weight for their kernels and are refused
  pack_dtype         must be int32 when present
  dynamic            GPTQModel per-module overrides {"+:regex" or "regex": {bits, group_size, ...}}
                     (first re.match wins; "-:regex" modules are not quantized and hold no qweight)
AutoRound (quant_method "auto-round" / "intel/auto-round"): packing_format (older: backend) names the
packer; "...gptq..." (not gptqmodel) is AutoGPTQ's (v1), "...awq..." AutoAWQ GEMM, anything else (auto_round,
auto_round:gptqmodel, auto_round:exllamav2 / triton) auto_round_extension's, which stores zero points as is
(v2 convention, no g_idx); extra_config overrides options per layer (exact name, else a regex). Only
data_type "int" is weight-only integer.
AutoAWQ (quant_method "awq"): version "gemm" with zero_point true; w_bit / q_group_size (or bits / group_size).
Its layers are repacked at import (`repack=True`, the default) into GPTQ v2 with the same group size
(int4_g128_asym for group 128; ir.convert: the same codes, zero points and scales, bit-identical dequantized
weights), whose kernels are 1.14-2.58x faster than AWQ's in every tuned H100 case; repack=False keeps the AWQ layout.

A g_idx that is not i // group_size is act-order whatever desc_act says (the origins' dequantizers always
gather scales by g_idx), so it selects desc_act=True.

EfficientQAT's native checkpoints carry no quantization metadata (its loader takes wbits and group_size as
arguments), and for 2/4/8 bits their bytes are indistinguishable from GPTQ v2: import them with
from_efficientqat(path, bits, group_size). Its released "-GPTQ" conversions are GPTQModel v2 and load with
from_gptq.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch

import ir
from ir import QuantizedTensor, SpecError
from ir.convert import convert, repack_target

from .common import Imported, claim_biases, read_state_dict

CONFIG_FILES = ("quantize_config.json", "quantization_config.json", "config.json")
REPACKED = ("marlin", "bitblas", "ipex", "qqq")


def _read_config(source, quantize_config) -> dict:
    if isinstance(quantize_config, Mapping):
        return dict(quantize_config)
    if quantize_config is not None:
        path = Path(quantize_config)
    else:
        folder = Path(source) if not isinstance(source, dict) else None
        folder = folder if folder is None or folder.is_dir() else folder.parent
        found = [folder / n for n in CONFIG_FILES if folder is not None and (folder / n).is_file()]
        if not found:
            raise SpecError(f"gptq import: no {' / '.join(CONFIG_FILES)} next to {source}; pass quantize_config")
        path = found[0]
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SpecError(f"gptq import: cannot read {path} ({e})") from e
    if path.name == "config.json":
        if "quantization_config" not in cfg:
            raise SpecError(f"gptq import: {path} has no quantization_config")
        cfg = cfg["quantization_config"]
    return cfg


def _layer_overrides(cfg: dict, layer: str) -> dict:
    """Per-layer options: AutoRound extra_config (exact name, else regex), GPTQModel dynamic (re.match)."""
    extra = cfg.get("extra_config") or {}
    if layer in extra:
        return dict(extra[layer])
    for pattern, opts in extra.items():
        try:
            if re.fullmatch(pattern, layer):
                return dict(opts)
        except re.error:
            continue
    for pattern, opts in (cfg.get("dynamic") or {}).items():
        if pattern.startswith("-:"):
            continue
        if re.match(pattern.removeprefix("+:"), layer):
            return dict(opts)
    return {}


def _method(cfg: dict) -> str:
    method = str(cfg.get("quant_method", "gptq")).lower()
    if method in ("auto-round", "intel/auto-round", "auto_round"):
        return "autoround"
    if method in ("gptq", "awq"):
        return method
    raise SpecError(f"gptq import: quant_method {method!r} is not a GPTQ-family checkpoint; supported: gptq, awq, "
                    f"auto-round")


def _is_awq(cfg: dict) -> bool:
    method = _method(cfg)
    packer = str(cfg.get("packing_format", cfg.get("backend", "")))
    return method == "awq" or (method == "autoround" and "awq" in packer)


def _bits(o: dict) -> int:
    return int(o.get("bits", o.get("w_bit", 4)))


def _layer_format(cfg: dict, layer: str, K: int, g_idx: torch.Tensor | None) -> tuple[str, dict]:
    """(format name, options) for one layer."""
    o = {**cfg, **_layer_overrides(cfg, layer)}
    method = _method(cfg)
    bits = _bits(o)
    group_size = int(o.get("group_size", o.get("q_group_size", 128)))
    if _is_awq(cfg):
        version = str(o.get("version", "gemm")).lower()
        if version != "gemm" or not o.get("zero_point", True):
            raise SpecError(f"layer {layer}: AutoAWQ version {version!r} zero_point={o.get('zero_point')} is not "
                            f"supported; only GEMM with zero points")
        return "awq", {"bits": bits, "group_size": group_size}
    if str(o.get("pack_dtype", "int32")).removeprefix("torch.") != "int32":
        raise SpecError(f"layer {layer}: pack_dtype {o['pack_dtype']!r} is not supported; GPTQ words must be int32")
    g = K if group_size == -1 else group_size
    act_order = bool(o.get("desc_act", False)) or (
        g_idx is not None and not torch.equal(g_idx.long(), torch.arange(K) // g))
    options = {"bits": bits, "group_size": group_size, "sym": bool(o.get("sym", True)), "desc_act": act_order}
    if method == "autoround":
        if str(o.get("data_type", "int")) != "int":
            raise SpecError(f"layer {layer}: AutoRound data_type {o.get('data_type')!r} is not integer weight-only")
        packer = str(cfg.get("packing_format", cfg.get("backend", "auto_round")))
        v1 = "gptq" in packer and "gptqmodel" not in packer
        return "gptq", {**options, "checkpoint": "v1" if v1 else "v2"}
    fmt = str(o.get("checkpoint_format", "gptq")).lower()
    if fmt in REPACKED or fmt not in ("gptq", "gptq_v2"):
        raise SpecError(f"layer {layer}: checkpoint_format {fmt!r} is not supported (it repacks the weight for "
                        f"its own kernels); supported: 'gptq' (v1) and 'gptq_v2'")
    return "gptq", {**options, "checkpoint": "v2" if fmt == "gptq_v2" else "v1"}


def _dims(awq: bool, bits: int, t: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(N, K): N from scales [groups, N]; K from g_idx, else the packed rows."""
    N = t["scales"].shape[1]
    if awq:
        return N, t["qweight"].shape[0]
    if "g_idx" in t:
        return N, t["g_idx"].numel()
    return N, t["qweight"].shape[0] * 32 // bits


def _layers(sd: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k.removesuffix(".qweight") for k in sd if k.endswith(".qweight"))


def _take(imp: Imported, sd: dict, layer: str, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    missing = [n for n in ("qweight", "qzeros", "scales") if f"{layer}.{n}" not in sd]
    if missing:
        raise SpecError(f"{imp.source}: layer {layer} has qweight but lacks {missing}")
    return {n: sd.pop(f"{layer}.{n}") for n in names if f"{layer}.{n}" in sd}


def _qt(imp: Imported, layer: str, fmt: str, options: dict, t: dict, N: int, K: int) -> QuantizedTensor:
    try:
        return QuantizedTensor(ir.get_format(fmt, **options), (N, K), t)
    except SpecError as e:
        raise SpecError(f"{imp.source}: layer {layer}: {e}") from e


def from_gptq(source, quantize_config: Mapping[str, Any] | str | Path | None = None, repack: bool = True) -> Imported:
    """A GPTQ / GPTQModel / AutoGPTQ / AutoRound / AutoAWQ checkpoint: a state dict, a .safetensors file or a
    folder of shards; quantize_config is a dict or a JSON path (default: found next to the files). With
    `repack`, layers whose format has a faster exact equivalent (AutoAWQ -> GPTQ v2) are converted once here."""
    sd, label = read_state_dict(source, "gptq import")
    cfg = _read_config(source, quantize_config)
    imp = Imported(source=label)
    for layer in _layers(sd):
        t = _take(imp, sd, layer, ("qweight", "qzeros", "scales", "g_idx"))
        N, K = _dims(_is_awq(cfg), _bits({**cfg, **_layer_overrides(cfg, layer)}), t)
        fmt, options = _layer_format(cfg, layer, K, t.get("g_idx"))
        qt = _qt(imp, layer, fmt, options, t, N, K)
        target = repack_target(qt.spec) if repack else None
        imp.layers[layer] = convert(qt, target) if target is not None else qt
    imp.tensors = sd
    return claim_biases(imp)


def from_efficientqat(source, bits: int, group_size: int) -> Imported:
    """An EfficientQAT native checkpoint (state dict, .safetensors file or folder): every '*.qweight' layer in
    its own layout (32 // bits codes per int32 word, zero points stored as is) with the given options."""
    sd, label = read_state_dict(source, "efficientqat import")
    imp = Imported(source=label)
    ir.get_format("eqat", bits=bits, group_size=group_size)  # refuse bad options before reading any layer
    for layer in _layers(sd):
        t = _take(imp, sd, layer, ("qweight", "qzeros", "scales", "g_idx"))
        N = t["scales"].shape[1]
        K = t["g_idx"].numel() if "g_idx" in t else (
            t["scales"].shape[0] * group_size if group_size > 0 else t["qweight"].shape[0] * (32 // bits))
        imp.layers[layer] = _qt(imp, layer, "eqat", {"bits": bits, "group_size": group_size}, t, N, K)
    imp.tensors = sd
    return claim_biases(imp)
