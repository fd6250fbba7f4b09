"""QuantizedTensor and the public quantize / dequantize entry points."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .registry import get_codec
from .spec import FormatSpec, SpecError

WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


@dataclass(frozen=True)
class QuantizedTensor:
    """A weight of shape (N, K) = (out_features, in_features) stored in `spec`'s canonical layout.

    `tensors` maps names to torch tensors exactly as the format's origin stores them."""

    spec: FormatSpec
    shape: tuple[int, int]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        validate_tensors(self.spec, self.shape, self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to(self, device: Any) -> "QuantizedTensor":
        return QuantizedTensor(self.spec, self.shape, {k: v.to(device) for k, v in self.tensors.items()})


def validate_tensors(spec: FormatSpec, shape: tuple[int, int], tensors: dict[str, torch.Tensor]) -> None:
    """Check names, shapes and dtypes against the spec's tensor schema, and the value ranges the format's codec checks
    (`check_values`, optional: small tensors such as CCQ's code map); raise SpecError naming the problem."""
    if len(shape) != 2:
        raise SpecError(f"{spec.name}: shape {shape} is invalid; expected (N, K)")
    N, K = shape
    schema = spec.tensor_schema(N, K)
    missing = [n for n in schema if n not in tensors and not spec.tensor(n).optional]
    extra = [n for n in tensors if n not in schema]
    if missing or extra:
        raise SpecError(f"{spec.name}: tensors {sorted(tensors)} do not match the schema {sorted(schema)} "
                        f"(missing {missing}, unexpected {extra})")
    for name, t in tensors.items():
        want_shape, want_dtype = schema[name]
        if not isinstance(t, torch.Tensor):
            raise SpecError(f"{spec.name}: tensor {name!r} is a {type(t).__name__}, expected a torch.Tensor")
        if tuple(t.shape) != want_shape or t.dtype != torch_dtype(want_dtype):
            raise SpecError(f"{spec.name}: tensor {name!r} has shape {tuple(t.shape)} dtype {t.dtype}; "
                            f"expected shape {want_shape} dtype torch.{want_dtype} for N={N}, K={K}")
    check_values = getattr(get_codec(spec), "check_values", None)   # value ranges a codec can check cheaply
    if check_values is not None:
        check_values(spec, tensors)


def _check_weight(spec: FormatSpec, W: Any) -> None:
    if not isinstance(W, torch.Tensor):
        raise SpecError(f"quantize({spec.name}): W is a {type(W).__name__}; expected a torch.Tensor of shape (N, K)")
    if W.dim() != 2:
        raise SpecError(f"quantize({spec.name}): W has shape {tuple(W.shape)}; expected 2-D (N, K) = (out, in)")
    if W.dtype not in WEIGHT_DTYPES:
        raise SpecError(f"quantize({spec.name}): W has dtype {W.dtype}; expected one of {list(WEIGHT_DTYPES)}")
    if not torch.isfinite(W).all():
        raise SpecError(f"quantize({spec.name}): W contains NaN or Inf")
    spec.check_shape(*W.shape)


def quantize(spec: FormatSpec, W: torch.Tensor, **calib: Any) -> QuantizedTensor:
    """Round-to-nearest encode of W (N, K) into spec's canonical layout (on the CPU).

    `calib` passes optional calibration data a format's encoder understands (e.g. `act_absmax`)."""
    _check_weight(spec, W)
    tensors = get_codec(spec).quantize(spec, W.detach().to("cpu", torch.float32), **calib)
    return QuantizedTensor(spec, tuple(W.shape), tensors)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32, device: Any = None) -> torch.Tensor:
    """The reference decoder: W (N, K), computed as the format's origin computes it.

    By default it runs on the CPU. With `device` (e.g. "cuda") the same torch code runs there, which is
    much faster at real shapes; a codec that builds CPU-only helper tensors internally falls back to the
    CPU (same values, just slower)."""
    if not isinstance(qt, QuantizedTensor):
        raise SpecError(f"dequantize: expected a QuantizedTensor, got {type(qt).__name__}")
    N, K = qt.shape
    codec = get_codec(qt.spec)
    if device is not None and torch.device(device).type != "cpu":
        moved = {k: v.detach().to(device) for k, v in qt.tensors.items()}
        try:
            W = codec.dequantize(qt.spec, moved, N, K)
            if W.device.type == torch.device(device).type and tuple(W.shape) == (N, K):
                return W.to(dtype)
        except (RuntimeError, TypeError, IndexError):
            pass  # a CPU-only codec: decode on the CPU below
    cpu = {k: v.detach().cpu() for k, v in qt.tensors.items()}
    W = codec.dequantize(qt.spec, cpu, N, K)
    if device is not None:
        W = W.to(device)
    if tuple(W.shape) != (N, K):  # pragma: no cover - a codec bug
        raise AssertionError(f"{qt.spec.name} decoder returned shape {tuple(W.shape)}, expected {(N, K)}")
    return W.to(dtype)
