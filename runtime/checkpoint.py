"""Quantized checkpoints: one safetensors file holding a whole model with QuantLinear layers.

Tensors are the model's state dict (a QuantLinear contributes `<layer>.<canonical tensor>` and `<layer>.bias`;
every other parameter and buffer is stored as is). Tensors that share storage (tied weights) are stored once
and listed as aliases. The safetensors metadata (strings) carries:
  quantcc.format_version  this file layout's version (FORMAT_VERSION); unknown versions are refused
  quantcc.version         the quantcc that wrote it
  quantcc.layers          JSON {layer: {"spec": FormatSpec dict, "spec_key", "in_features", "out_features",
                          "bias": bool, "tensors": [canonical tensor names]}}
  quantcc.schema          JSON {tensor key: [shape, dtype]} for every stored tensor
  quantcc.digests         JSON {tensor key: sha256 of its bytes}
  quantcc.aliases         JSON {state-dict key: the stored key it shares storage with}
Loading checks all of it and raises CheckpointError naming the file, layer or tensor: a truncated or corrupted
file, a tensor whose shape, dtype or bytes differ from the metadata, an unknown format version, a layer the
model lacks or a model tensor the file lacks. It never returns a silently wrong model.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from codegen import __version__
from ir import FormatSpec, SpecError

from .linear import QuantLinear

FORMAT_VERSION = 1
KNOWN_FORMAT_VERSIONS = (1,)
_META = ("quantcc.format_version", "quantcc.version", "quantcc.layers", "quantcc.schema", "quantcc.digests",
         "quantcc.aliases")


class CheckpointError(ValueError):
    """A quantized checkpoint that cannot be loaded as it is; the message says what and where."""


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dedupe(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Stored tensors (contiguous, CPU, no two sharing storage) and aliases for exact duplicates (tied
    weights: the same storage, offset, shape, strides and dtype)."""
    stored, aliases, views, storages = {}, {}, {}, set()
    for key, t in sd.items():
        t = t.detach()
        storage = (t.untyped_storage().data_ptr(), t.device) if t.numel() else None
        view = (storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if storage is not None and view in views:
            aliases[key] = views[view]
            continue
        views[view] = key
        shared = storage in storages  # another view of the same memory: store a copy
        storages.add(storage)
        t = t.cpu().contiguous()
        stored[key] = t.clone() if shared or storage is None else t
    return stored, aliases


def save_quantized(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `model` (with its QuantLinear layers) to one safetensors file, atomically."""
    from safetensors.torch import save_file
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            layers[name] = {"spec": m.spec.to_dict(), "spec_key": m.spec.key, "in_features": m.in_features,
                            "out_features": m.out_features, "bias": m.bias is not None, "tensors": list(m.tensors)}
    tensors, aliases = _dedupe(model.state_dict())
    meta = {
        "format": "pt",
        "quantcc.format_version": str(FORMAT_VERSION),
        "quantcc.version": __version__,
        "quantcc.layers": json.dumps(layers, sort_keys=True),
        "quantcc.schema": json.dumps({k: [list(t.shape), _dtype_name(t.dtype)] for k, t in tensors.items()},
                                     sort_keys=True),
        "quantcc.digests": json.dumps({k: _digest(t) for k, t in tensors.items()}, sort_keys=True),
        "quantcc.aliases": json.dumps(aliases, sort_keys=True),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class _Reader:
    """The opened file with its metadata parsed and every tensor's header checked against the schema."""

    def __init__(self, path: Path, verify: bool):
        from safetensors import SafetensorError, safe_open
        self.path, self.verify = path, verify
        try:
            self.f = safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: cannot read it as safetensors ({e}); the file is truncated, corrupted "
                                  f"or not a checkpoint") from e
        meta = self.f.metadata() or {}
        if "quantcc.format_version" not in meta:
            raise CheckpointError(f"{path}: no quantcc metadata; not written by runtime.save_quantized (GGUF, GPTQ, "
                                  f"bitsandbytes and compressed-tensors files load through runtime.importers)")
        version = meta["quantcc.format_version"]
        if not version.isdigit() or int(version) not in KNOWN_FORMAT_VERSIONS:
            raise CheckpointError(f"{path}: checkpoint format version {version!r} is unknown to quantcc "
                                  f"{__version__} (it reads {list(KNOWN_FORMAT_VERSIONS)}); upgrade quantcc")
        missing = [k for k in _META if k not in meta]
        if missing:
            raise CheckpointError(f"{path}: metadata lacks {missing}; the file is corrupted")
        self.writer = meta["quantcc.version"]
        self.layers, self.schema, self.digests, self.aliases = (
            self._json(meta, k) for k in ("quantcc.layers", "quantcc.schema", "quantcc.digests", "quantcc.aliases"))
        keys = set(self.f.keys())
        if keys != set(self.schema) or keys != set(self.digests):
            raise CheckpointError(f"{path}: stored tensors differ from the metadata schema (only in the file: "
                                  f"{sorted(keys - set(self.schema))[:5]}, only in the schema: "
                                  f"{sorted(set(self.schema) - keys)[:5]}); the file is corrupted")
        for key, (shape, dtype) in self.schema.items():
            sl = self.f.get_slice(key)
            got_shape, got_dtype = list(sl.get_shape()), _dtype_name(self._read_dtype(key))
            if got_shape != shape or got_dtype != dtype:
                raise CheckpointError(f"{path}: tensor {key!r} is stored with shape {got_shape} dtype {got_dtype} "
                                      f"but the schema says shape {shape} dtype {dtype}; the file is corrupted")
        bad = [a for a, k in self.aliases.items() if k not in self.schema]
        if bad:
            raise CheckpointError(f"{path}: aliases {bad} point at tensors that are not stored")

    def _json(self, meta: dict, key: str):
        try:
            value = json.loads(meta[key])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{self.path}: metadata {key} is not valid JSON ({e}); the file is corrupted") from e
        if not isinstance(value, dict):
            raise CheckpointError(f"{self.path}: metadata {key} must be a JSON object")
        return value

    _ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                  "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                  "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}

    def _read_dtype(self, key: str) -> torch.dtype:
        st = self.f.get_slice(key).get_dtype()
        if st not in self._ST_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {key!r} has safetensors dtype {st}, which quantcc does "
                                  f"not store")
        return self._ST_DTYPES[st]

    def tensor(self, key: str, device: torch.device | str | None) -> torch.Tensor:
        key = self.aliases.get(key, key)
        t = self.f.get_tensor(key)
        if self.verify and _digest(t) != self.digests[key]:
            raise CheckpointError(f"{self.path}: tensor {key!r} does not match its sha256 digest; the file is "
                                  f"corrupted")
        return t if device is None else t.to(device)


def _quant_layer(r: _Reader, name: str, rec: dict, device) -> QuantLinear:
    where = f"{r.path}: layer {name!r}"
    try:
        spec = FormatSpec.from_dict(rec["spec"])
        in_f, out_f, names, has_bias = rec["in_features"], rec["out_features"], rec["tensors"], rec["bias"]
    except (SpecError, KeyError, TypeError) as e:
        raise CheckpointError(f"{where}: its record is invalid ({e})") from e
    if spec.key != rec.get("spec_key"):
        raise CheckpointError(f"{where}: the stored spec does not hash to its recorded key (edited metadata, or a "
                              f"checkpoint from another IR schema version)")
    keys = [f"{name}.{n}" for n in names] + ([f"{name}.bias"] if has_bias else [])
    absent = [k for k in keys if k not in r.schema and k not in r.aliases]
    if absent:
        raise CheckpointError(f"{where}: tensors {absent} are not in the file")
    tensors = {n: r.tensor(f"{name}.{n}", device) for n in names}
    bias = r.tensor(f"{name}.bias", device) if has_bias else None
    try:
        return QuantLinear(spec, in_f, out_f, tensors, bias)
    except SpecError as e:
        raise CheckpointError(f"{where}: {e}") from e


def load_quantized(model_or_factory: nn.Module | Callable[[], nn.Module], path: str | os.PathLike, *,
                   device: torch.device | str | None = None, verify: bool = True) -> nn.Module:
    """Load a save_quantized file into a model: an nn.Module, or a callable building one (the float model's
    architecture; its nn.Linear layers named in the file become QuantLinear). Non-quantized tensors are copied
    into the model's parameters (cast to their dtype, as load_state_dict does; a model built on the meta device
    takes the file's tensors). `device` places the quantized layers' tensors (default: the CPU). `verify`
    checks every tensor's sha256 (a few seconds per GB). Returns the model."""
    path = Path(path)
    r = _Reader(path, verify)
    model = model_or_factory if isinstance(model_or_factory, nn.Module) else model_or_factory()
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"load_quantized: the factory returned {type(model).__name__}, not an nn.Module")
    absent = []
    for name, rec in r.layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            absent.append(name)
            continue
        if not isinstance(module, (nn.Linear, QuantLinear)) or (module.in_features, module.out_features) != (
                rec.get("in_features"), rec.get("out_features")):
            raise CheckpointError(f"{path}: layer {name!r} is a quantized ({rec.get('out_features')}, "
                                  f"{rec.get('in_features')}) linear in the checkpoint but {module!r} in the model")
    if absent:
        raise CheckpointError(f"{path}: layers {absent[:8]}{' ...' if len(absent) > 8 else ''} are in the "
                              f"checkpoint but the model has no such modules (wrong architecture or config?)")
    for name, rec in r.layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, _quant_layer(r, name, rec, device))
    quant_keys = {f"{n}.{t}" for n, rec in r.layers.items() for t in rec["tensors"]} | {
        f"{n}.bias" for n, rec in r.layers.items() if rec["bias"]}
    model_keys = set(model.state_dict())
    file_keys = set(r.schema) | set(r.aliases)
    if model_keys != file_keys:
        raise CheckpointError(f"{path}: the model and the checkpoint hold different tensors: missing from the file "
                              f"{sorted(model_keys - file_keys)[:8]}, not in the model "
                              f"{sorted(file_keys - model_keys)[:8]}")
    read: dict[str, torch.Tensor] = {}  # each stored tensor read once; aliases (tied weights) share it
    rest = {}
    for k in sorted(model_keys - quant_keys):
        stored = r.aliases.get(k, k)
        if stored not in read:
            read[stored] = r.tensor(stored, None)
        rest[k] = read[stored]
    current = model.state_dict()
    wrong = [f"{k}: file {tuple(t.shape)}, model {tuple(current[k].shape)}" for k, t in rest.items()
             if t.shape != current[k].shape]
    if wrong:
        raise CheckpointError(f"{path}: tensors do not fit the model's shapes: {'; '.join(wrong[:8])}")
    on_meta = any(t.is_meta for t in current.values())
    try:
        model.load_state_dict(rest, strict=False, assign=on_meta)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: tensors do not fit the model: {e}") from e
    return model
