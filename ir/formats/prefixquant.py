"""PrefixQuant W4A4 (ChenMnZ/PrefixQuant @ 1eacd81): static per-tensor int4 activations x int4 weights.

Origin facts (`quantize/quantizer.py`, `quantize/int_linear_fake.py`, `utils/quant_utils.py`,
`utils/rotation_utils.py`; the README says only fake quantization is released, so there is no
origin storage layout):
- weights: symmetric per output channel without zero point (`disable_zero_point_in_sym`), min-max
  init s_w = clamp(2 max|w| / (2**4 - 1), 1e-4, 1e4), q = clamp(round(w / s_w), -8, 7), w ~ s_w q;
  `utils/quant_utils.py: weight_layer_mse_init` then tries clip factors 1 - i/20 (i < 10) for the
  least output error on calibration inputs (multiplying the running best scale, so its grid
  compounds), and training refines s_w. This reference encoder is RTN with clip factors 1 - i/20
  of the min-max scale scored by weight MSE (the data-free case: inputs = identity).
- activations: static per tensor (group = hidden size), s_x = clamp(2 xmax / (2**4 - 1), 1e-4, 1e4)
  where xmax is the largest per-channel max |x| (`get_act_stat`, measured after the online
  Hadamard), x_q = clamp(round(x / s_x), -8, 7). (The origin may refine s_x by a grid search on
  calibration data, `tensor_mse_init`; no data here, so the encoder uses the min-max rule.)
- `down_online_had`: the input is rotated online by a Hadamard before quantization
  (`matmul_hadU_cuda(x, had_K, K)`, full size K) and the same Hadamard is folded offline into the
  down_proj weight (`rotate_mlp_output` -> `apply_exact_had_to_linear(W, had_dim=-1, output=False)`).

Storage (this project's choice, byte-compatible with QuaRot's `pack_i4`, the int4 layout of the
CUTLASS W4A4 GEMMs that PrefixQuant builds on): `qweight` int32 [N, K/8], row-major, 8 two's
complement nibbles per word LSB-first along K, so viewed as bytes (little endian) it is uint8
[N, K/2] with element 2j in the low nibble of byte j. `weight_scale` fp16 [N], `act_scale` fp32 [1].

Online Hadamard: a block-diagonal normalized Sylvester Hadamard H of `had_size` along K (origin:
one Hadamard of size K, which equals had_size = K when K is a power of two; the origin's
non-power-of-two `had_K` factors are not supported). The encoder quantizes W H, so with
xt = H x (blocks of the last dim)::

    y = (s_x * clamp(round(xt / s_x), -8, 7)) @ W_q^T,   W_q = dequantize(...) = s_w[o] * q[o, k]

The kernel: int4 x int4 dot with int32 accumulation, epilogue y = act_scale * weight_scale[o] * acc.
"""
from __future__ import annotations

import numbers

import torch

from ..bitpack import pack_cols, unpack_cols
from ..hadamard import block_hadamard
from ..registry import register_codec, register_format
from ..spec import ActQuant, Decode, FormatSpec, Packing, ScaleLevel, SpecError, TensorField, Transform
from .matryoshka import round_up_fp16

BITS = 4
QMIN, QMAX = -(2 ** (BITS - 1)), 2 ** (BITS - 1) - 1
SCALE_MIN, SCALE_MAX = 1e-4, 1e4          # the origin's clamp on every scale


def build_prefixquant_w4a4(online_hadamard: bool = False, had_size: int = 128) -> FormatSpec:
    """PrefixQuant W4A4: int4 sym per-channel weights x static per-tensor int4 activations, optional online Hadamard."""
    if not isinstance(online_hadamard, bool):
        raise SpecError(f"prefixquant_w4a4: option online_hadamard = {online_hadamard!r} is invalid; "
                        f"expected True or False")
    if isinstance(had_size, bool) or not isinstance(had_size, int) or had_size < 2 or had_size & (had_size - 1):
        raise SpecError(f"prefixquant_w4a4: option had_size = {had_size!r} is invalid; expected a power of two >= 2 "
                        f"(the Hadamard block along K)")
    had = had_size if online_hadamard else 0
    k_multiple = max(8, had)
    reason = "8 int4 codes per int32 word along K"
    if had:
        reason += f" and Hadamard blocks of {had} along K"
    transforms = (Transform("hadamard", side="input", placement="online", size=had, normalized=True),) if had else ()
    return FormatSpec(
        name="prefixquant_w4a4",
        family="prefixquant",
        packing=Packing(layout="quarot_i4", word_dtype="int32", field_bits=BITS, order="lsb", axis="K",
                        fields_per_word=8),
        decode=Decode(kind="affine", bits=BITS, signed=True, params=(("zero", 0), ("code", "twos_complement"))),
        tensors=(
            TensorField("qweight", "int32", ("N", "K // 8"), "codes"),
            TensorField("weight_scale", "float16", ("N",), "scales"),
            TensorField("act_scale", "float32", ("1",), "scales"),
        ),
        scales=(ScaleLevel("weight_scale", "row", "float16", op="mul"),),
        transforms=transforms,
        act_quant=ActQuant(bits=BITS, kind="int", signed=True, scale="static_per_tensor", tensor="act_scale"),
        params=(("bits", BITS), ("act_bits", BITS), ("online_hadamard", online_hadamard), ("had_size", had),
                ("k_multiple_reason", reason)),
        k_multiple=k_multiple,
        description=("y[t,o] = act_scale * weight_scale[o] * sum_k xq[t,k] * q[o,k]; "
                     "xq = clamp(round(xt/act_scale), -8, 7), xt = x (or its blockwise Hadamard when online_hadamard); "
                     "q = int4 nibbles of qweight"),
    )


# -- pure-torch helpers (twins of the kernel helpers) -------------------------------------------

def sign_extend(fields: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned `bits`-wide two's complement fields -> signed int64 values."""
    half = 1 << (bits - 1)
    return (fields.to(torch.int64) ^ half) - half


def signed_fields(words: torch.Tensor, slot: torch.Tensor | int, bits: int) -> torch.Tensor:
    """Field `slot` of LSB-first int32 words as signed int32 (twin of the gemm kernel's _signed_fields): shift the
    field to the top of the 32-bit word (wrapping), then shift back arithmetically, which sign-extends it."""
    top = (words.to(torch.int64) << (32 - bits - slot * bits)) & 0xFFFFFFFF
    return ((top - ((top >> 31) << 32)) >> (32 - bits)).to(torch.int32)


def fields_as_float(words: torch.Tensor, slot: torch.Tensor | int, bits: int) -> torch.Tensor:
    """Field `slot` as an exact float32 signed value by the exponent trick (twin of the gemv kernel's
    _biased_float_fields): u = field ^ 2**(bits-1) = q + 2**(bits-1); u | 0x4B000000 as float32 is 2**23 + u."""
    half = 1 << (bits - 1)
    u = ((words.to(torch.int32) >> (slot * bits)) & ((1 << bits) - 1)) ^ half
    return (u | 0x4B000000).view(torch.float32) - (8388608.0 + half)


def codes16_bytes(words: torch.Tensor) -> torch.Tensor:
    """16 * the 8 int4 codes of each LSB-first int32 word, as int8 in field order [..., 8] (twin of the gemm
    kernel's _k_major_codes16): a nibble at the top of its byte reads as the signed int8 16 * q, so
    (w << 4) & 0xF0F0F0F0 holds fields 0, 2, 4, 6 in its bytes 0..3 and w & 0xF0F0F0F0 fields 1, 3, 5, 7. The
    kernel's int32 accumulator then sums 16 * q * x_code, at most 128 * 8 per product for int4 activation codes:
    no overflow below K = 2**21."""
    w = words.to(torch.int64)
    even = (((w << 4) & 0xF0F0F0F0).to(torch.int32)).contiguous().view(torch.int8).reshape(*words.shape, 4)
    odd = ((w & 0xF0F0F0F0).to(torch.int32)).contiguous().view(torch.int8).reshape(*words.shape, 4)
    return torch.stack((even, odd), dim=-1).reshape(*words.shape, 8)   # [.., j, h]: field 2j + h


def weight_codes(W: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """int4 codes (int64 in [-8, 7]) of W [N, K] with per-row scales [N]."""
    return torch.round(W / weight_scale.float()[:, None]).clamp(QMIN, QMAX).to(torch.int64)


def clip_search_scale(W: torch.Tensor, n_grid: int = 20, max_shrink: float = 0.5) -> torch.Tensor:
    """Per-row fp16 scale [N]: the min-max init times the clip factor 1 - i/n_grid (i < max_shrink*n_grid)
    with the least squared weight error (first wins ties); each candidate is rounded up to fp16."""
    base = (2 * W.abs().amax(1) / (2 ** BITS - 1)).clamp(SCALE_MIN, SCALE_MAX)
    best_s, best_err = None, None
    for i in range(int(max_shrink * n_grid)):
        s = round_up_fp16((base * (1 - i / n_grid)).clamp(SCALE_MIN, SCALE_MAX))
        err = ((W - s.float()[:, None] * weight_codes(W, s)) ** 2).sum(1)
        if best_s is None:
            best_s, best_err = s, err
        else:
            better = err < best_err
            best_s, best_err = torch.where(better, s, best_s), torch.where(better, err, best_err)
    return best_s


def act_scale_from_absmax(act_absmax: float) -> float:
    """PrefixQuant's static activation scale rule: 2 * xmax / (2**4 - 1), clamped to [1e-4, 1e4]."""
    return min(max(2.0 * act_absmax / (2 ** BITS - 1), SCALE_MIN), SCALE_MAX)


def quantize_activation(x: torch.Tensor, act_scale: torch.Tensor | float, bits: int = BITS) -> torch.Tensor:
    """Kernel prologue twin: int8 codes clamp(round(x / s), -2**(bits-1), 2**(bits-1) - 1), computed in fp32.

    x must already be in the kernel's basis (block_hadamard(x, had_size) when online_hadamard)."""
    s = torch.as_tensor(act_scale, dtype=torch.float32).reshape(-1)[0]
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.round(x.to(torch.float32) / s).clamp(lo, hi).to(torch.int8)


def check_act_absmax(spec: FormatSpec, calib: dict) -> float | None:
    """The encoder's only calibration input, `act_absmax` (max |x| of the layer input), validated; None if absent."""
    unknown = sorted(set(calib) - {"act_absmax"})
    if unknown:
        raise SpecError(f"{spec.name}: unexpected calibration inputs {unknown}; valid: ['act_absmax']")
    v = calib.get("act_absmax")
    if v is None:
        return None
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 <= float(v) < float("inf")):
        raise SpecError(f"{spec.name}: act_absmax = {v!r} is invalid; expected a finite float >= 0 "
                        f"(max |x| of the layer input, in the kernel's basis)")
    return float(v)


class PrefixQuantCodec:
    """RTN with PrefixQuant's weight clip grid. Without `act_absmax`, act_scale = 1.0 (a placeholder: pass the
    calibration max |x| measured after the online Hadamard, if any)."""

    def quantize(self, spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
        absmax = check_act_absmax(spec, calib)
        had = spec.param("had_size")
        Wk = block_hadamard(W, had) if had else W
        scale = clip_search_scale(Wk)
        q = weight_codes(Wk, scale)
        act = 1.0 if absmax is None else act_scale_from_absmax(absmax)
        return {"qweight": pack_cols(q & (2 ** BITS - 1), BITS, 32), "weight_scale": scale,
                "act_scale": torch.tensor([act], dtype=torch.float32)}

    def dequantize(self, spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
        q = sign_extend(unpack_cols(tensors["qweight"], BITS, K, 32), BITS)
        return tensors["weight_scale"].float()[:, None] * q.float()     # exact in fp32


register_format("prefixquant_w4a4", build_prefixquant_w4a4)
register_codec("prefixquant", PrefixQuantCodec())
