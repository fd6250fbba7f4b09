"""Matryoshka Quantization (Nair et al., ICML 2025): one int8 parent, served at r MSBs.

Origin of the slicing and decode math: IST-DASLab/MatGPTQ `src/quant_utils_matgpqt.py`
(`matryoshka_slice`, `dequantize`, `MatryoshkaQuantizer.find_params`), a follow-up implementation
by another group; the MatQuant paper's own code was not found. Per group of `group_size` weights
along K, the parent holds uint8 codes q with an fp16 scale s and an integer zero z:

    asym: s = (xmax - xmin) / 255, z = round(-xmin / s)        sym: s = 2 max|w| / 255, z = 128
    q    = clamp(round(w / s) + z, 0, 255)
    d    = 8 - r
    q_r  = q >> d;  if r < 8: q_r += (q >> (d - 1)) & 1;  q_r = clamp(q_r, 0, 2**r - 1)
    w    = s * ((q_r << d) - z)              (computed in fp16, as the origin does with fp16 scales)

Served tensors (canonical layout of this format; MatGPTQ's CUDA kernel swizzles the uint8 parent
into bit planes at load, a device layout not modelled here):

    qweight int32 [ceil(K / (32 // r)), N]  q_r packed along K, LSB-first, 32 // r fields per word
                                            and never straddling: r = 3 puts 10 fields in bits 0..29,
                                            r = 6 puts 5 in bits 0..29 (EfficientQAT's 3-bit rule);
                                            unused high bits and the tail of the last word are 0
    scales  fp16  [K / group_size, N]       the parent's scale
    zeros   uint8 [K / group_size, N]       the parent's zero, in parent (8-bit) code units

One parent serves every r: `quantize_parent` then `serve_from_parent(spec_r, ...)` per width.
Encoder deviations from MatGPTQ (documented choices, not origin facts): the range always includes
0 (GPTQ's rule; it keeps the asymmetric zero inside uint8), and the scale is rounded *up* to the
next fp16 so the stored scale still covers the group's range; an all-zero group takes MatGPTQ's
[-1, 1] fallback range with zero 128, which every sliced grid holds (so it decodes to exact 0).
MatGPTQ's multi-width argmin
encoder (a GPTQ inner step) is not reproduced: the parent is plain round-to-nearest.
"""
from __future__ import annotations

import torch

from ..bitpack import pack_rows, unpack_rows
from ..registry import register_codec, register_format
from ..spec import Decode, FormatSpec, Packing, ScaleLevel, SpecError, TensorField

PARENT_BITS = 8
R_CHOICES = (2, 3, 4, 6, 8)
GROUP_SIZES = (32, 64, 128, 256)


def _choice(fmt: str, option: str, value, choices: tuple) -> None:
    if isinstance(value, bool) or value not in choices:
        raise SpecError(f"{fmt}: option {option} = {value!r} is invalid; expected one of {list(choices)}")


def build_matryoshka(r: int = 4, group_size: int = 128, sym: bool = False) -> FormatSpec:
    """Matryoshka int8 parent served at its r MSBs (MatGPTQ slicing), fp16 group scales + uint8 zeros."""
    _choice("matryoshka", "r", r, R_CHOICES)
    _choice("matryoshka", "group_size", group_size, GROUP_SIZES)
    if not isinstance(sym, bool):
        raise SpecError(f"matryoshka: option sym = {sym!r} is invalid; expected True or False")
    fpw = 32 // r
    shift = PARENT_BITS - r
    return FormatSpec(
        name="matryoshka",
        family="matryoshka",
        packing=Packing(layout="matryoshka", word_dtype="int32", field_bits=r, order="lsb", axis="K",
                        straddle=False, fields_per_word=fpw),
        decode=Decode(kind="msb_slice", bits=r, signed=False, params=(
            ("parent_bits", PARENT_BITS), ("r", r), ("shift", shift), ("round_half_up", True), ("clamp", True),
            ("stored", "sliced"), ("compute_dtype", "float16"))),
        tensors=(
            TensorField("qweight", "int32", ("(K + fields_per_word - 1) // fields_per_word", "N"), "codes"),
            TensorField("scales", "float16", ("K // group_size", "N"), "scales"),
            TensorField("zeros", "uint8", ("K // group_size", "N"), "zeros"),
        ),
        scales=(ScaleLevel("scales", "group", "float16", op="affine_zero", axis="K", size=group_size),),
        params=(("r", r), ("group_size", group_size), ("sym", sym), ("parent_bits", PARENT_BITS),
                ("fields_per_word", fpw),
                ("k_multiple_reason", f"one fp16 scale and uint8 zero per group of {group_size} along K")),
        k_multiple=group_size,
        description=(f"w[k,n] = fp16(scales[k//{group_size},n]) * fp16((q_r[k,n] << {shift}) - zeros[k//{group_size},n])"
                     f"; q_r = the stored {r}-bit code, the round-half-up {r}-MSB slice of the uint8 parent"),
    )


# -- pure-torch helpers (twins of the kernel helpers) -------------------------------------------

def round_up_fp16(x: torch.Tensor) -> torch.Tensor:
    """float32 -> the smallest fp16 value >= x (for positive finite x in fp16 range)."""
    h = x.to(torch.float16)
    return torch.where(h.float() < x, torch.nextafter(h, torch.full_like(h, float("inf"))), h)


def parent_params(W: torch.Tensor, group_size: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group parent scale (fp16 [K/g, N]) and zero (uint8 [K/g, N]) of W [N, K] (float32)."""
    N, K = W.shape
    Wg = W.reshape(N, K // group_size, group_size)
    xmin = Wg.amin(-1).clamp(max=0.0)
    xmax = Wg.amax(-1).clamp(min=0.0)
    if sym:
        xmax = torch.maximum(-xmin, xmax)
        xmin = -xmax
    flat = xmin == xmax                      # all-zero group: MatGPTQ's [-1, +1] fallback, zero 128
    xmin = torch.where(flat, -1.0, xmin)
    xmax = torch.where(flat, 1.0, xmax)
    maxq = 2 ** PARENT_BITS - 1
    s = round_up_fp16((xmax - xmin) / maxq)
    mid = (maxq + 1) / 2                     # 128: on every sliced grid (a multiple of 2**(8 - r))
    if sym:
        z = torch.full_like(xmin, mid)
    else:
        z = torch.where(flat, mid, torch.round(-xmin / s.float()).clamp(0, maxq))
    return s.t().contiguous(), z.to(torch.uint8).t().contiguous()


def parent_codes(W: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """Round-to-nearest uint8 parent codes [N, K] of W [N, K] with the given parent scales/zeros [K/g, N]."""
    s = scales.float().t().repeat_interleave(group_size, dim=1)
    z = zeros.float().t().repeat_interleave(group_size, dim=1)
    return (torch.round(W / s) + z).clamp(0, 2 ** PARENT_BITS - 1).to(torch.uint8)


def quantize_parent(W: torch.Tensor, group_size: int = 128, sym: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RTN int8 parent of W [N, K] (float32): (codes uint8 [N, K], scales fp16 [K/g, N], zeros uint8 [K/g, N])."""
    scales, zeros = parent_params(W, group_size, sym)
    return parent_codes(W, scales, zeros, group_size), scales, zeros


def slice_parent(parent_codes: torch.Tensor, r: int) -> torch.Tensor:
    """MatGPTQ's `matryoshka_slice`: the round-half-up r-MSB slice of uint8 parent codes (same shape, uint8)."""
    q = parent_codes.to(torch.int64)
    d = PARENT_BITS - r
    q_r = q >> d
    if r < PARENT_BITS:
        q_r = q_r + ((q >> (d - 1)) & 1)
    return q_r.clamp(0, 2 ** r - 1).to(torch.uint8)


def msb_dequant(q_r: torch.Tensor, r: int, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """w = s * ((q_r << (8 - r)) - z) in fp16, returned as float32 [N, K]; q_r [N, K], scales/zeros [K/g, N]."""
    level = (q_r.to(torch.int32) << (PARENT_BITS - r)) - zeros.to(torch.int32).t().repeat_interleave(group_size, 1)
    s = scales.t().repeat_interleave(group_size, dim=1)
    return (s * level.to(torch.float16)).float()


def serve_from_parent(spec: FormatSpec, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor
                      ) -> dict[str, torch.Tensor]:
    """The served tensors of `spec` (its r) built from one int8 parent (codes uint8 [N, K], scales, zeros)."""
    if spec.family != "matryoshka":
        raise SpecError(f"serve_from_parent: spec {spec.name!r} is not a matryoshka format")
    if not (isinstance(codes, torch.Tensor) and codes.dtype == torch.uint8 and codes.dim() == 2):
        raise SpecError("serve_from_parent: parent codes must be a uint8 tensor [N, K]")
    N, K = codes.shape
    schema = spec.tensor_schema(N, K)
    for name, t in (("scales", scales), ("zeros", zeros)):
        shape, dtype = schema[name]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != getattr(torch, dtype):
            got = (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__
            raise SpecError(f"serve_from_parent: parent {name} is {got}; expected shape {shape} dtype torch.{dtype}")
    r = spec.param("r")
    q_r = slice_parent(codes, r)
    return {"qweight": pack_rows(q_r.t(), r, 32), "scales": scales.contiguous(), "zeros": zeros.contiguous()}


class MatryoshkaCodec:
    """Reference codec: RTN int8 parent, sliced to r bits; decode in fp16 like MatGPTQ."""

    def quantize(self, spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
        if calib:
            raise SpecError(f"{spec.name}: unexpected calibration inputs {sorted(calib)}; this encoder takes none")
        codes, scales, zeros = quantize_parent(W, spec.param("group_size"), spec.param("sym"))
        return serve_from_parent(spec, codes, scales, zeros)

    def synthetic(self, spec: FormatSpec, N: int, K: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Random words (every r-bit field is a valid slice code), scales in [0.005, 0.015]; zeros 128 when sym."""
        from ..synthetic import random_by_role
        out = random_by_role(spec, N, K, gen)
        if spec.param("sym"):
            out["zeros"] = torch.full_like(out["zeros"], 2 ** (PARENT_BITS - 1))
        return out

    def dequantize(self, spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
        r = spec.param("r")
        q_r = unpack_rows(tensors["qweight"], r, K, 32).t()
        return msb_dequant(q_r, r, tensors["scales"], tensors["zeros"], spec.param("group_size"))


register_format("matryoshka", build_matryoshka)
register_codec("matryoshka", MatryoshkaCodec())
