"""The registry of named formats and of the codecs that encode/decode each format family.

A format family module in `ir/formats/` calls `register_format(name, builder, codec=...)`:
`builder(**options) -> FormatSpec` validates its options and returns a frozen spec, and the
codec (one per `FormatSpec.family`) implements the bit-exact reference encoder and decoder.
Modules in `ir/formats/` are discovered (sorted by name) the first time the registry is read.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from .spec import FormatSpec, SpecError


class Codec(Protocol):
    """Reference encoder/decoder for one format family (pure torch, CPU)."""

    def quantize(self, spec: FormatSpec, W: torch.Tensor, **calib: Any) -> dict[str, torch.Tensor]: ...

    def dequantize(self, spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[..., FormatSpec]
    summary: str


_FORMATS: dict[str, _Entry] = {}
_CODECS: dict[str, Codec] = {}
_loaded = False


def register_format(name: str, builder: Callable[..., FormatSpec], summary: str = "") -> None:
    if name in _FORMATS and _FORMATS[name].builder is not builder:
        raise SpecError(f"format {name!r} is registered twice")
    _FORMATS[name] = _Entry(name, builder, summary or (builder.__doc__ or "").strip().splitlines()[0])


def register_codec(family: str, codec: Codec) -> None:
    if family in _CODECS and _CODECS[family] is not codec:
        raise SpecError(f"codec for family {family!r} is registered twice")
    _CODECS[family] = codec


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from . import formats
    for mod in sorted(m.name for m in pkgutil.iter_modules(formats.__path__)):
        if not mod.startswith("_"):
            importlib.import_module(f"{formats.__name__}.{mod}")


def list_formats() -> list[str]:
    """Names of every registered format, sorted."""
    _load()
    return sorted(_FORMATS)


def format_summary(name: str) -> str:
    _load()
    return _FORMATS[name].summary


def format_options(name: str) -> dict[str, Any]:
    """The options a format accepts, with their defaults."""
    _load()
    sig = inspect.signature(_FORMATS[_check_name(name)].builder)
    return {k: p.default for k, p in sig.parameters.items()}


def _check_name(name: str) -> str:
    if name not in _FORMATS:
        raise SpecError(f"unknown format {name!r}; registered formats: {', '.join(sorted(_FORMATS))}")
    return name


def get_format(name: str, **options: Any) -> FormatSpec:
    """Build the named format's spec. Unknown options are refused with the valid ones listed."""
    _load()
    entry = _FORMATS[_check_name(name)]
    valid = format_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SpecError(f"format {name!r} got unknown options {unknown}; valid options: {valid}")
    return entry.builder(**options)


def get_codec(spec: FormatSpec) -> Codec:
    _load()
    if spec.family not in _CODECS:
        raise SpecError(f"no codec for format family {spec.family!r}; known: {sorted(_CODECS)}")
    return _CODECS[spec.family]
