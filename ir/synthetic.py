"""Synthetic stored tensors: valid canonical tensors at real shapes for benchmarks and GPU checks.

Reference encoders can take minutes at real shapes (GGUF K-quant search, k-means, Viterbi), and a
kernel's speed and correctness do not depend on how the codes were chosen, only on their being valid.
`random_by_role` draws every tensor by its role; a codec whose layout has constraints that random words
break (fp16 fields inside GGUF blocks, group indices, codebook indices below the codebook size) defines
`synthetic(spec, N, K, generator) -> dict[str, Tensor]` with the fix-ups. The result passes
`validate_tensors` and decodes to finite values (tests check this for every format). The contents are
valid but statistically unlike trained weights: use `ir.quantize` to measure quantization error."""
from __future__ import annotations

import torch

from .registry import get_codec
from .spec import FormatSpec
from .tensor import QuantizedTensor, quantize, torch_dtype

_INT_RANGE = {torch.uint8: (0, 256), torch.int8: (-128, 128), torch.int16: (-2 ** 15, 2 ** 15),
              torch.int32: (-2 ** 31, 2 ** 31), torch.int64: (-2 ** 62, 2 ** 62)}


def _small_reference(spec: FormatSpec) -> QuantizedTensor:
    n, k = spec.n_multiple * max(1, 16 // spec.n_multiple), spec.k_multiple * max(1, 64 // spec.k_multiple)
    g = torch.Generator().manual_seed(0)
    return quantize(spec, torch.randn(n, k, generator=g) * 0.02)


def random_by_role(spec: FormatSpec, N: int, K: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Each tensor drawn by its role: integer words uniformly over their bit patterns, float scales in
    [0.005, 0.015], other floats of either sign, tables copied from a small real quantization, `perm`
    tensors as random permutations of their last dim."""
    small = None
    out = {}
    for name, (shape, dtype_name) in spec.tensor_schema(N, K, include_optional=False).items():
        field = spec.tensor(name)
        dtype = torch_dtype(dtype_name)
        if field.role in ("table", "transform") or (field.role == "meta" and dtype.is_floating_point):
            small = small or _small_reference(spec)
            ref = small.tensors.get(name)
            if ref is not None and tuple(ref.shape) == shape:
                out[name] = ref.clone()
                continue
        if field.role == "perm":
            out[name] = torch.randperm(shape[-1], generator=gen).to(dtype).expand(shape).contiguous()
        elif dtype.is_floating_point:
            vals = 0.005 + 0.01 * torch.rand(shape, generator=gen)
            if field.role not in ("scales", "zeros"):
                vals = vals * torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
            out[name] = vals.to(dtype)
        else:
            lo, hi = _INT_RANGE[dtype]
            out[name] = torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64).to(dtype)
    return out


def synthetic_quantized(spec: FormatSpec, N: int, K: int, seed: int = 0) -> QuantizedTensor:
    """A QuantizedTensor of shape (N, K) with valid random contents (see module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    codec = get_codec(spec)
    make = getattr(codec, "synthetic", None)
    tensors = make(spec, N, K, gen) if make is not None else random_by_role(spec, N, K, gen)
    return QuantizedTensor(spec, (N, K), tensors)
