"""Static activation quantization (pure torch): the twin of the kernels' prologue.

int:  x_q = clamp(round_half_even(x / s), qmin, qmax), qmin/qmax the signed or unsigned `bits` range
fp8:  x_q = e4m3(clamp(x / s, -448, 448))
The matmul then runs on x_q and the epilogue multiplies by s (and the weight's row scale)."""
from __future__ import annotations

import torch

from .spec import ActQuant, FormatSpec, SpecError


def act_range(aq: ActQuant) -> tuple[int, int]:
    if aq.kind == "fp8_e4m3":
        return -448, 448
    if aq.signed:
        return -(2 ** (aq.bits - 1)), 2 ** (aq.bits - 1) - 1
    return 0, 2 ** aq.bits - 1


def quantize_codes(aq: ActQuant, x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """x -> the quantized activation codes (integer-valued float, or fp8-representable float), x's dtype float32+."""
    qmin, qmax = act_range(aq)
    v = x.to(torch.float32) / torch.as_tensor(scale, dtype=torch.float32)
    if aq.kind == "int":
        return torch.round(v).clamp(qmin, qmax)
    return v.clamp(qmin, qmax).to(torch.float8_e4m3fn).to(torch.float32)


def quantize_activation_ref(spec: FormatSpec, tensors: dict, x: torch.Tensor) -> torch.Tensor:
    """Fake-quantize x as the kernel does: codes x s, returned in x's dtype (float64 stays float64)."""
    aq = spec.act_quant
    if aq is None:
        raise SpecError(f"format {spec.name!r} has no activation quantization")
    s = tensors[aq.tensor].reshape(-1)[0].to(torch.float32)
    return (quantize_codes(aq, x, s).to(x.dtype) * s.to(x.dtype))
