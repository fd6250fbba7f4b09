"""The reference matmul every kernel is checked against: y = x @ W^T in float64.

For weight-only formats W = ir.dequantize(qt) (the effective weight, transforms included).
For formats that quantize activations (spec.act_quant), no single W exists: the kernel computes
y = Q(T_in(x)) @ C^T, where T_in are the spec's online input transforms (applied in x's dtype, as the
entry point does), Q the static activation quantizer (ir.actquant) and C = ir.dequantize(qt), the weight
in the basis the activations are quantized in. This function is that definition, in float64."""
from __future__ import annotations

import torch

from .actquant import quantize_activation_ref
from .hadamard import block_hadamard
from .tensor import QuantizedTensor, dequantize


def apply_input_transforms(qt: QuantizedTensor, x: torch.Tensor) -> torch.Tensor:
    """The spec's online input-side transforms, in spec order, rounded back to x's dtype after each."""
    for tr in qt.spec.transforms:
        if tr.side != "input" or tr.placement != "online":
            continue
        if tr.kind == "hadamard":
            x = block_hadamard(x.float(), tr.size or x.shape[-1], tr.normalized).to(x.dtype)
        elif tr.kind == "permutation":
            x = x[..., qt.tensors[tr.tensor].long().to(x.device)]
        else:
            x = (x.float() * qt.tensors[tr.tensor].float().to(x.device)).to(x.dtype)
    return x


def reference_matmul(qt: QuantizedTensor, x: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
    """float64 y for x (..., K); `W` may pass a precomputed ir.dequantize(qt) to save decoding."""
    W = dequantize(qt, device=x.device) if W is None else W
    if qt.spec.act_quant is None:
        return x.double() @ W.double().T
    xt = apply_input_transforms(qt, x)
    xq = quantize_activation_ref(qt.spec, {k: v.to(x.device) for k, v in qt.tensors.items()}, xt.double())
    return xq @ W.double().T
