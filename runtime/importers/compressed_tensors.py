"""compressed-tensors checkpoints (vLLM llm-compressor, neuralmagic) into the gptq and w8a8_static formats.

config.json's quantization_config (quant_method "compressed-tensors"):
  format                 pack-quantized | int-quantized | naive-quantized | float-quantized (a scheme's own
                         "format" wins; "mixed-precision" needs one per scheme)
  config_groups          {name: {targets, weights, input_activations, output_activations, format}}; targets are
                         module names, "re:<regex>" (re.match) or class names such as "Linear" (matched by any
                         quantized layer: there is no model to ask); precedence name > regex > class
  weights / input_activations   QuantizationArgs: num_bits, type int|float, symmetric, strategy
                         tensor|channel|group (inferred from group_size when absent), group_size, dynamic, actorder
  ignore, kv_cache_scheme, sparsity_config (only absent or "dense"), transform_config (must be absent)
Per layer (W is (N, K) = (out, in); G = K // group_size, 1 for channel):
  pack-quantized  weight_packed int32 [N, ceil(K/pf)], pf = 32 // bits codes per word along K, LSB first, each
                  code stored as q + 2**(bits-1) (q the signed code), padding fields 0; weight_shape [N, K];
                  weight_scale [N, G]; asym: weight_zero_point packed the same way along N, int32
                  [ceil(N/pf), G] (older writers: int8 [N, G] unpacked); actorder group: weight_g_idx [K]
  int-/naive-quantized  weight int8 [N, K] signed codes (float-quantized: float8_e4m3fn); weight_scale;
                  weight_zero_point int8 when asym; static activations: input_scale [1] (or a scalar)
The origin dequantizes (lifecycle/forward.py `_dequantize`) in the scale dtype: W = (q - zp) * scale, with
group g_idx[i] for column i under actorder group (it sorts columns by g_idx and cuts groups of group_size).

Mapping (exact unless said otherwise):
- weight-only int 2/3/4/8 bits, any of tensor/channel/group, sym or asym, actorder none/weight/group ->
  gptq (checkpoint v2: zero points stored as is, desc_act when g_idx is not i // group_size). Unsigned codes
  u = q + 2**(bits-1) and zero points z = zp + 2**(bits-1) (sym: z = 2**(bits-1)) give u - z = q - zp.
  For 2/4/8 bits pack-quantized words hold the same K-run of codes as GPTQ's qweight words, so qweight is
  weight_packed transposed (no bit moves); 3-bit (10 codes a word in compressed-tensors, a straddling
  bit stream in GPTQ) and int-/naive-quantized int8 codes are repacked with gptq's packer. Zero points are
  repacked along N into qzeros; scales are transposed to [G, N] (a per-tensor scale is broadcast to N).
  gptq decodes fp16(scale * (u - z)). fp16 scales: bit-identical to the origin. bf16/fp32 scales are
  converted to fp16, refused unless every scale converts exactly; the decode is then the product rounded
  once to fp16, where the origin rounds it to bf16/fp32: for symmetric int4 (|q| <= 8, at most 11
  significant bits) the fp16 product is exact, so rounding quantcc's decode to bf16 gives the origin's
  bits; otherwise it can differ by the fp16 rounding (a gptq scale-dtype option would close this).
- W8A8 int8 / fp8-e4m3 (int-, float- or naive-quantized), symmetric weights per channel or per tensor
  (broadcast to N), static symmetric per-tensor input scale -> w8a8_static(weight=int8|fp8_e4m3): the codes
  as stored, weight_scale [N] and act_scale [1] upcast to float32 (exact). Its decode is the float32 product
  (exact for 8-bit codes times bf16/fp16 scales), the value the scaled-mm epilogue applies; rounded to the
  scale dtype it is the origin's decode.
Refused with the layer, the scheme and this list: dynamic activations (per-token int8, FP8_DYNAMIC: the
scale is computed at run time, which w8a8_static cannot express), weight-only float (fp8 W8A16), block /
token / tensor_group strategies (FP8 block, NVFP4), nvfp4 / mxfp4 / marlin-24 / sparse formats, 2:4
sparsity, output activation quantization, other bit widths, asymmetric W8A8, transforms.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import ir
from ir import QuantizedTensor, SpecError
from ir.bitpack import unpack_cols, unpack_rows
from ir.formats.gptq_pack import gptq_pack_codes, gptq_pack_zeros

from .common import Imported, claim_biases, read_state_dict

WHAT = "compressed-tensors import"
FORMATS = ("pack-quantized", "int-quantized", "naive-quantized", "float-quantized")
WEIGHT_ONLY_BITS = (2, 3, 4, 8)
SUPPORTED = (
    ("weight-only int2/3/4/8, tensor/channel/group, sym or asym, actorder none/weight/group "
     "(pack-quantized, int-quantized, naive-quantized) -> gptq"),
    ("W8A8 int8 or fp8-e4m3: symmetric channel/tensor weights x static symmetric per-tensor input scale "
     "(int-quantized, float-quantized, naive-quantized) -> w8a8_static"),
)
_TENSORS = ("weight_packed", "weight_shape", "weight_scale", "weight_zero_point", "weight_g_idx",
            "input_scale", "input_zero_point")


def _supported() -> str:
    return "supported: " + "; ".join(SUPPORTED)


# -- config ----------------------------------------------------------------------------------------------
def _read_config(source, config) -> dict:
    if isinstance(config, Mapping):
        cfg = dict(config)
    else:
        if config is not None:
            path = Path(config)
        else:
            folder = None if isinstance(source, dict) else Path(source)
            folder = folder if folder is None or folder.is_dir() else folder.parent
            if folder is None or not (folder / "config.json").is_file():
                raise SpecError(f"{WHAT}: no config.json next to {source if folder else 'the state dict'}; "
                                f"pass config")
            path = folder / "config.json"
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SpecError(f"{WHAT}: cannot read {path} ({e})") from e
    cfg = cfg.get("quantization_config", cfg)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("config_groups"), dict) or not cfg["config_groups"]:
        raise SpecError(f"{WHAT}: the config has no quantization_config with config_groups")
    method = str(cfg.get("quant_method", "compressed-tensors"))
    if method != "compressed-tensors":
        raise SpecError(f"{WHAT}: quant_method {method!r} is not 'compressed-tensors'")
    sparsity = cfg.get("sparsity_config") or {}
    if sparsity.get("format", "dense") != "dense":
        raise SpecError(f"{WHAT}: sparsity_config format {sparsity['format']!r} (e.g. 2:4 sparse) is not "
                        f"supported; only dense weights")
    if cfg.get("transform_config"):
        raise SpecError(f"{WHAT}: transform_config (online rotations) is not supported")
    return cfg


def _target_matches(target: str, layer: str) -> str | None:
    """'name', 'regex' or 'class' when `target` selects `layer` (a class name selects every layer)."""
    if target.startswith("re:"):
        return "regex" if re.match(target[3:], layer) else None
    if target == layer:
        return "name"
    return "class" if "." not in target and target[:1].isupper() else None


def _scheme(cfg: dict, layer: str) -> tuple[str, dict]:
    """(group name, scheme) for a quantized layer; an exact name beats a regex beats a class name."""
    found: dict[str, list[str]] = {"name": [], "regex": [], "class": []}
    for name, scheme in cfg["config_groups"].items():
        kinds = {_target_matches(t, layer) for t in scheme.get("targets", [])} - {None}
        for kind in kinds:
            found[kind].append(name)
    for kind in ("name", "regex", "class"):
        groups = sorted(set(found[kind]))
        if len(groups) > 1:
            raise SpecError(f"{WHAT}: layer {layer} matches several config groups {groups} by {kind}")
        if groups:
            return groups[0], cfg["config_groups"][groups[0]]
    raise SpecError(f"{WHAT}: layer {layer} holds quantized tensors but no config group targets it "
                    f"(groups: {sorted(cfg['config_groups'])})")


def _args(a: dict | None) -> dict | None:
    """QuantizationArgs with compressed-tensors' defaults and inferred strategy."""
    if a is None:
        return None
    o = {"num_bits": 8, "type": "int", "symmetric": True, "group_size": None, "strategy": None,
         "dynamic": False, "actorder": None, **a}
    o["type"] = str(o["type"]).lower()
    if o["strategy"] is None:
        g = o["group_size"]
        o["strategy"] = "tensor" if g is None else "group" if g > 0 else "channel"
    o["strategy"] = str(o["strategy"]).lower()
    act = o["actorder"]
    o["actorder"] = ("group" if act else None) if isinstance(act, bool) or act is None else \
        {"dynamic": "group", "static": "weight"}.get(str(act).lower(), str(act).lower())
    return o


def _describe(w: dict | None, ia: dict | None, fmt: str) -> str:
    def one(a):
        if a is None:
            return "none"
        s = f"{a['type']}{a['num_bits']} {a['strategy']}"
        s += f" g{a['group_size']}" if a["strategy"] == "group" else ""
        s += " sym" if a["symmetric"] else " asym"
        return s + (f" dynamic={a['dynamic']}" if a["dynamic"] else "")
    return f"format {fmt}, weights {one(w)}, input_activations {one(ia)}"


# -- tensors ---------------------------------------------------------------------------------------------
def _scales_fp16(where: str, s: torch.Tensor) -> torch.Tensor:
    """gptq keeps fp16 scales; bf16/fp32 ones are converted only when every value survives exactly."""
    if s.dtype == torch.float16:
        return s
    if s.dtype not in (torch.bfloat16, torch.float32):
        raise SpecError(f"{where}: weight_scale dtype {s.dtype} is invalid; expected float16, bfloat16 or float32")
    h = s.to(torch.float16)
    bad = int((h.to(s.dtype) != s).sum())
    if bad:
        raise SpecError(f"{where}: {bad} of {s.numel()} {s.dtype} weight scales are not exact in float16 (the "
                        f"gptq format stores fp16 scales)")
    return h


def _expect(where: str, name: str, t: torch.Tensor | None, dtypes: tuple, shape: tuple | None = None):
    if t is None:
        raise SpecError(f"{where}: missing {name}")
    if t.dtype not in dtypes:
        raise SpecError(f"{where}: {name} has dtype {t.dtype}; expected {' or '.join(map(str, dtypes))}")
    if shape is not None and tuple(t.shape) != shape:
        raise SpecError(f"{where}: {name} has shape {tuple(t.shape)}; expected {shape}")
    return t


def _weight_only_scales(where: str, w: dict, t: dict, N: int, K: int) -> tuple[torch.Tensor, int]:
    """(scales [G, N] fp16, gptq group_size) from weight_scale [N, G] / [N, 1] / [1] / []."""
    s = _expect(where, "weight_scale", t.get("weight_scale"), (torch.float16, torch.bfloat16, torch.float32))
    if w["strategy"] == "tensor":
        if s.numel() != 1:
            raise SpecError(f"{where}: per-tensor weight_scale has shape {tuple(s.shape)}; expected one value")
        return _scales_fp16(where, s.reshape(1, 1).expand(1, N).contiguous()), -1
    if w["strategy"] == "channel":
        _expect(where, "weight_scale", s, (s.dtype,), (N, 1))
        return _scales_fp16(where, s.t().contiguous()), -1
    g = int(w["group_size"])
    if K % g:
        raise SpecError(f"{where}: in_features K = {K} is not a multiple of group_size {g}")
    _expect(where, "weight_scale", s, (s.dtype,), (N, K // g))
    return _scales_fp16(where, s.t().contiguous()), g


def _zero_points(where: str, w: dict, t: dict, N: int, G: int) -> torch.Tensor:
    """Unsigned zero points [G, N] (zp + 2**(bits-1)); symmetric: 2**(bits-1)."""
    bits, off = w["num_bits"], 1 << (w["num_bits"] - 1)
    zp = t.get("weight_zero_point")
    if w["symmetric"]:
        if zp is not None and bool((zp != 0).any()):
            raise SpecError(f"{where}: symmetric weights but weight_zero_point is not all zero")
        return torch.full((G, N), off, dtype=torch.int64)
    if zp is None:
        raise SpecError(f"{where}: asymmetric weights but missing weight_zero_point")
    if w["strategy"] == "tensor":
        _expect(where, "weight_zero_point", zp, (torch.int8,))
        if zp.numel() != 1:
            raise SpecError(f"{where}: per-tensor weight_zero_point has shape {tuple(zp.shape)}; expected one value")
        z = zp.reshape(1, 1).to(torch.int64).expand(G, N) + off
    elif zp.dtype == torch.int32:                        # pack-quantized: packed along N, [ceil(N/pf), G]
        _expect(where, "weight_zero_point", zp, (torch.int32,), (-(-N // (32 // bits)), G))
        z = unpack_rows(zp, bits, N).t()
    else:
        _expect(where, "weight_zero_point", zp, (torch.int8,), (N, G))
        z = zp.to(torch.int64).t() + off
    if int(z.min()) < 0 or int(z.max()) >= 1 << bits:
        raise SpecError(f"{where}: weight_zero_point values fall outside the signed {bits}-bit range")
    return z.contiguous()


def _g_idx(where: str, w: dict, t: dict, K: int, g: int) -> torch.Tensor | None:
    """An act-order g_idx, or None when absent, uninitialized (-1) or the plain i // group_size."""
    g_idx = t.get("weight_g_idx")
    if g_idx is None:
        if w["actorder"] == "group":
            raise SpecError(f"{where}: actorder 'group' but missing weight_g_idx")
        return None
    if w["strategy"] != "group":
        raise SpecError(f"{where}: weight_g_idx needs the group strategy, not {w['strategy']!r}")
    g_idx = _expect(where, "weight_g_idx", g_idx, (torch.int32, torch.int64), (K,)).to(torch.int64)
    if bool((g_idx == -1).any()):                       # the origin's "not initialized": column order
        return None
    counts = torch.bincount(g_idx.clamp(min=0), minlength=K // g)
    if int(g_idx.min()) < 0 or int(g_idx.max()) >= K // g or bool((counts != g).any()):
        raise SpecError(f"{where}: weight_g_idx must put exactly group_size = {g} columns in each of the {K // g} "
                        f"groups (the origin cuts the g_idx-sorted columns into groups of {g})")
    return None if torch.equal(g_idx, torch.arange(K) // g) else g_idx.to(torch.int32)


def _codes(where: str, fmt: str, w: dict, t: dict, N: int, K: int) -> tuple[str, torch.Tensor]:
    """('words', qweight) when the pack-quantized words are GPTQ's transposed, else ('codes', unsigned [K, N])."""
    bits, off = w["num_bits"], 1 << (w["num_bits"] - 1)
    pf = 32 // bits
    if fmt == "pack-quantized":
        packed = _expect(where, "weight_packed", t.get("weight_packed"), (torch.int32,), (N, -(-K // pf)))
        if bits != 3 and K % pf == 0:
            return "words", packed.t().contiguous()
        return "codes", unpack_cols(packed, bits, K).t().contiguous()
    q = _expect(where, "weight", t.get("weight"), (torch.int8,), (N, K)).to(torch.int64)
    if int(q.min()) < -off or int(q.max()) >= off:
        raise SpecError(f"{where}: int8 weight codes fall outside the signed {bits}-bit range [{-off}, {off - 1}]")
    return "codes", (q + off).t().contiguous()


def _shape(where: str, fmt: str, t: dict) -> tuple[int, int]:
    if fmt == "pack-quantized":
        shape = _expect(where, "weight_shape", t.get("weight_shape"), (torch.int32, torch.int64), (2,))
        N, K = (int(v) for v in shape)
        if N <= 0 or K <= 0:
            raise SpecError(f"{where}: weight_shape {[N, K]} is invalid")
        return N, K
    weight = t.get("weight")
    if weight is None or weight.dim() != 2:
        raise SpecError(f"{where}: missing a 2-D quantized weight")
    return tuple(weight.shape)


def _weight_only(where: str, fmt: str, w: dict, t: dict) -> QuantizedTensor:
    bits = w["num_bits"]
    if bits not in WEIGHT_ONLY_BITS:
        raise SpecError(f"{where}: {bits}-bit weights are not supported (gptq holds {list(WEIGHT_ONLY_BITS)})")
    if fmt == "float-quantized":
        raise SpecError(f"{where}: int weights in format float-quantized are inconsistent")
    N, K = _shape(where, fmt, t)
    kind, data = _codes(where, fmt, w, t, N, K)
    scales, group_size = _weight_only_scales(where, w, t, N, K)
    g_idx = _g_idx(where, w, t, K, group_size if group_size > 0 else K)
    spec = ir.get_format("gptq", bits=bits, group_size=group_size, sym=bool(w["symmetric"]),
                         desc_act=g_idx is not None, checkpoint="v2")
    spec.check_shape(N, K)
    tensors = {"qweight": data if kind == "words" else gptq_pack_codes(data, bits),
               "qzeros": gptq_pack_zeros(_zero_points(where, w, t, N, scales.shape[0]), bits, 0),
               "scales": scales}
    if g_idx is not None:
        tensors["g_idx"] = g_idx
    return QuantizedTensor(spec, (N, K), tensors)


def _w8a8(where: str, fmt: str, w: dict, t: dict) -> QuantizedTensor:
    kind = "int8" if w["type"] == "int" else "fp8_e4m3"
    code_dtype = torch.int8 if kind == "int8" else torch.float8_e4m3fn
    if fmt == "pack-quantized" or fmt == ("float-quantized" if kind == "int8" else "int-quantized"):
        raise SpecError(f"{where}: {kind} weights in format {fmt} are not a W8A8 layout")
    weight = _expect(where, "weight", t.get("weight"), (code_dtype,))
    if weight.dim() != 2:
        raise SpecError(f"{where}: weight has shape {tuple(weight.shape)}; expected (N, K)")
    N, K = weight.shape
    floats = (torch.float16, torch.bfloat16, torch.float32)
    s = _expect(where, "weight_scale", t.get("weight_scale"), floats)
    if w["strategy"] == "channel":
        _expect(where, "weight_scale", s, floats, (N, 1))
    elif s.numel() != 1:
        raise SpecError(f"{where}: per-tensor weight_scale has shape {tuple(s.shape)}; expected one value")
    a = _expect(where, "input_scale", t.get("input_scale"), floats)
    if a.numel() != 1:
        raise SpecError(f"{where}: input_scale has shape {tuple(a.shape)}; expected one value (per tensor)")
    for name in ("weight_zero_point", "input_zero_point"):
        if name in t and bool((t[name] != 0).any()):
            raise SpecError(f"{where}: symmetric scheme but {name} is not all zero")
    return QuantizedTensor(ir.get_format("w8a8_static", weight=kind), (N, K), {
        "weight": weight, "weight_scale": s.to(torch.float32).reshape(-1).expand(N).contiguous(),
        "act_scale": a.to(torch.float32).reshape(1)})


def _layer(where: str, fmt: str, scheme: dict, t: dict) -> QuantizedTensor:
    w, ia = _args(scheme.get("weights")), _args(scheme.get("input_activations"))
    desc = _describe(w, ia, fmt)

    def refuse(why: str):
        raise SpecError(f"{where}: scheme ({desc}) is not supported: {why}; {_supported()}")
    if fmt not in FORMATS:
        refuse(f"format {fmt!r} (nvfp4 / mxfp4 / marlin-24 / sparse / dense are not imported)")
    if w is None:
        refuse("no weight quantization")
    if scheme.get("output_activations") is not None:
        refuse("output activation quantization")
    if w["dynamic"]:
        refuse("dynamic weight scales")
    if w["strategy"] not in ("tensor", "channel", "group"):
        refuse(f"weight strategy {w['strategy']!r}")
    if ia is None:
        if w["type"] != "int":
            refuse("weight-only float (fp8 W8A16) has no quantcc format")
        return _weight_only(where, fmt, w, t)
    if ia["dynamic"]:
        refuse(f"dynamic ({ia['strategy']}) activation scales are computed at run time; w8a8_static holds "
               f"one static per-tensor input_scale")
    if (w["type"], w["num_bits"]) != (ia["type"], ia["num_bits"]) or w["num_bits"] != 8 \
            or w["type"] not in ("int", "float"):
        refuse("weights and activations must both be int8 or both fp8")
    if not (w["symmetric"] and ia["symmetric"]):
        refuse("asymmetric W8A8")
    if w["strategy"] == "group" or ia["strategy"] != "tensor":
        refuse("W8A8 needs channel or tensor weight scales and a per-tensor input scale")
    return _w8a8(where, fmt, w, t)


def _layers(sd: dict) -> list[str]:
    names = {k.rpartition(".")[0] for k in sd if k.rpartition(".")[2] in ("weight_scale", "weight_packed")}
    return sorted(names)


def from_compressed_tensors(source, config: Mapping[str, Any] | str | Path | None = None) -> Imported:
    """A compressed-tensors checkpoint (state dict, .safetensors file or folder of shards); config is
    config.json (or its quantization_config) as a dict or a path, by default config.json next to the files.
    Every layer with weight_scale / weight_packed is imported or refused; other tensors pass through."""
    sd, label = read_state_dict(source, WHAT)
    cfg = _read_config(source, config)
    imp = Imported(source=label)
    for layer in _layers(sd):
        where = f"{label}: layer {layer}"
        if f"{layer}.weight_scale" not in sd:
            raise SpecError(f"{where}: missing weight_scale")
        group, scheme = _scheme(cfg, layer)
        fmt = str(scheme.get("format") or cfg.get("format") or "")
        t = {n: sd[f"{layer}.{n}"] for n in (*_TENSORS, "weight") if f"{layer}.{n}" in sd}
        try:
            imp.layers[layer] = _layer(f"{where} (config group {group})", fmt, scheme, t)
        except SpecError as e:
            raise SpecError(str(e) if str(e).startswith(label) else f"{where}: {e}") from e
        for n in t:
            del sd[f"{layer}.{n}"]
    imp.tensors = sd
    return claim_biases(imp)
