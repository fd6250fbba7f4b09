"""W8A8 with static activation scales: int8 or fp8 (e4m3) weights and activations.

Origin: the compressed-tensors checkpoints that vLLM serves (`W8A8` int8 and `FP8` static
schemes; neuralmagic/compressed-tensors `quantization/utils/helpers.py: calculate_qparams`,
`quantization/quant_args.py: round_to_quantized_type`, `lifecycle/forward.py: _quantize`). Facts used:
- symmetric, zero point 0; per-output-channel weight scale, one static per-tensor input scale.
- scale = max|v| / (bit_range / 2) with bit_range = qmax - qmin: int8 255 (s = max/127.5),
  fp8 e4m3fn 896 (s = max/448); scales are clamped below at float32 eps.
- int: q = clamp(round(v / s), -128, 127) (round half to even, like vLLM's `scaled_int8_quant`);
  fp8: q = e4m3(clamp(v / s, -448, 448)) (cast rounds to nearest even).

Canonical tensors (compressed-tensors names in brackets, same bytes):
    weight        int8 | float8_e4m3fn [N, K]   row-major codes          [weight]
    weight_scale  float32 [N]                   per output channel       [weight_scale, shape [N, 1]]
    act_scale     float32 [1]                   static input scale       [input_scale]
(Checkpoints that store bf16/fp16 scales are upcast on import; that is exact.)

The kernel: x_q = quantize_activation(x, act_scale), an int8 x int8 -> int32 (or fp8 x fp8 -> fp32)
dot, epilogue y = act_scale * weight_scale[o] * acc. `dequantize` returns weight * weight_scale in fp32.
"""
from __future__ import annotations

import torch

from ..registry import register_codec, register_format
from ..spec import ActQuant, Decode, FormatSpec, Packing, ScaleLevel, SpecError, TensorField
from .prefixquant import check_act_absmax

WEIGHT_KINDS = ("int8", "fp8_e4m3")
_CODE_DTYPE = {"int8": "int8", "fp8_e4m3": "float8_e4m3fn"}
_HALF_RANGE = {"int8": 255 / 2, "fp8_e4m3": 448.0}     # bit_range / 2 (compressed-tensors)
INT8_MIN, INT8_MAX = -128, 127
FP8_MAX = 448.0
_EPS = torch.finfo(torch.float32).eps


def build_w8a8_static(weight: str = "int8") -> FormatSpec:
    """W8A8 static: int8 or fp8-e4m3 per-channel symmetric weights x static per-tensor activations of the same type."""
    if weight not in WEIGHT_KINDS:
        raise SpecError(f"w8a8_static: option weight = {weight!r} is invalid; expected one of {list(WEIGHT_KINDS)}")
    code = _CODE_DTYPE[weight]
    return FormatSpec(
        name="w8a8_static",
        family="w8a8",
        packing=Packing(layout="row_major_8bit", word_dtype=code, field_bits=8, order="lsb", axis="K",
                        fields_per_word=1),
        decode=Decode(kind="affine", bits=8, signed=True, params=(("zero", 0), ("code_dtype", code))),
        tensors=(
            TensorField("weight", code, ("N", "K"), "codes"),
            TensorField("weight_scale", "float32", ("N",), "scales"),
            TensorField("act_scale", "float32", ("1",), "scales"),
        ),
        scales=(ScaleLevel("weight_scale", "row", "float32", op="mul"),),
        act_quant=ActQuant(bits=8, kind="int" if weight == "int8" else "fp8_e4m3", signed=True,
                           scale="static_per_tensor", tensor="act_scale"),
        params=(("weight", weight), ("act", weight)),
        description=("y[t,o] = act_scale * weight_scale[o] * sum_k xq[t,k] * weight[o,k]; "
                     + ("xq = clamp(round(x/act_scale), -128, 127)" if weight == "int8"
                        else "xq = e4m3(clamp(x/act_scale, -448, 448))")),
    )


# -- pure-torch helpers (twins of the kernel helpers) -------------------------------------------

def scale_from_absmax(absmax: torch.Tensor, kind: str) -> torch.Tensor:
    """compressed-tensors' symmetric scale: max|v| / (bit_range / 2), at least float32 eps."""
    return (absmax.to(torch.float32) / _HALF_RANGE[kind]).clamp(min=_EPS)


def quantize_codes(v: torch.Tensor, scale: torch.Tensor, kind: str) -> torch.Tensor:
    """v / scale (broadcast) -> int8 codes (round half even, clamp [-128, 127]) or e4m3 codes (clamp +-448)."""
    u = v.to(torch.float32) / scale
    if kind == "int8":
        return torch.round(u).clamp(INT8_MIN, INT8_MAX).to(torch.int8)
    return u.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def quantize_activation(x: torch.Tensor, act_scale: torch.Tensor | float, kind: str = "int8") -> torch.Tensor:
    """Kernel prologue twin: static per-tensor quantization of x (computed in fp32) to int8 or e4m3 codes."""
    if kind not in WEIGHT_KINDS:
        raise SpecError(f"quantize_activation: kind = {kind!r} is invalid; expected one of {list(WEIGHT_KINDS)}")
    return quantize_codes(x, torch.as_tensor(act_scale, dtype=torch.float32).reshape(-1)[0], kind)


def int8_to_float_bits(q: torch.Tensor) -> torch.Tensor:
    """int8 codes -> exact float32 without an int->float convert (twin of the gemv kernel's _int8_to_float):
    q + 128 + 0x4B000000 read as float32 bits is 2**23 + 128 + q exactly, so subtracting 8388736 leaves q."""
    return (q.to(torch.int32) + 0x4B000080).view(torch.float32) - 8388736.0


def random_fp8_codes(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Uniformly random finite e4m3fn codes (bit patterns 0x7F and 0xFF, the NaNs, are redrawn as +-0)."""
    b = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    return torch.where((b & 0x7F) == 0x7F, b & 0x80, b).view(torch.float8_e4m3fn)


class W8A8Codec:
    """Per-channel absmax RTN. Without `act_absmax`, act_scale = 1.0 (a placeholder: pass the calibrated max |x|)."""

    def quantize(self, spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
        absmax = check_act_absmax(spec, calib)
        kind = spec.param("weight")
        scale = scale_from_absmax(W.abs().amax(1), kind)
        act = torch.ones(1) if absmax is None else scale_from_absmax(torch.tensor([absmax]), kind)
        return {"weight": quantize_codes(W, scale[:, None], kind), "weight_scale": scale,
                "act_scale": act.to(torch.float32)}

    def synthetic(self, spec: FormatSpec, N: int, K: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Uniform int8 codes, or uniform finite e4m3 codes (random_by_role's small floats would all be
        subnormal e4m3 codes); weight and activation scales in [0.005, 0.015]. Drawn in the code dtype (fast)."""
        if spec.param("weight") == "fp8_e4m3":
            weight = random_fp8_codes((N, K), gen)
        else:
            weight = torch.randint(INT8_MIN, INT8_MAX + 1, (N, K), generator=gen, dtype=torch.int8)
        return {"weight": weight, "weight_scale": 0.005 + 0.01 * torch.rand(N, generator=gen),
                "act_scale": 0.005 + 0.01 * torch.rand(1, generator=gen)}

    def dequantize(self, spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
        return tensors["weight"].to(torch.float32) * tensors["weight_scale"][:, None]


register_format("w8a8_static", build_w8a8_static)
register_codec("w8a8", W8A8Codec())
