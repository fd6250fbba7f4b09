"""WaterSIC (Lifar, Savkin, Ordentlich, Polyanskiy, arXiv 2603.04956) stored in a fixed-width container.

Origin (egorlifar/watersic @ f837398, `quant_layerwise/methods/zsic.py`):
- `compress_w2q`: L = chol(Sigma_X); sw_i = ||W[:, i]||^2 / N;
  c = exp(mean_i log(12 sw_i L_ii^2) / 2 - R ln 2); per-input-column step alpha_i = c / L_ii
  (reverse waterfilling); LDLQ over columns with z = round(Y[:, i] / c); then LS rescalers
  T (per row) and Gamma (per column).
- `dequantize_zsic`: W = (T[:, None] * (Z.float() * alpha_base.float())) * Gamma[None, :], in fp32.
- Z is int64 with an unbounded, column-dependent range; the reported rate is Z's empirical
  entropy (a Huffman code), and the repository has no packed storage and no kernel.

This format (project choices, not origin facts):
- Z is stored at a fixed width of `bits` (2..8) as two's complement, range [-2**(bits-1), 2**(bits-1) - 1]:
  `qweight` int8 [N, K] when bits == 8, else int32 [N, ceil(K / (32 // bits))] holding 32 // bits
  fields per word LSB-first along K, never straddling (unused high bits and the tail are 0).
  A fixed width is what a GEMM prologue can decode without an entropy decoder.
- `col_scale` float32 [K] = alpha_i * Gamma_i (the encoder's Gamma is 1) and `row_scale` float32 [N] = T.
  Decode: W[o, i] = row_scale[o] * (Z[o, i] * col_scale[i]) in fp32, the origin's order with
  Gamma folded into alpha. The kernel folds col_scale into the activations (an input-side
  online transform) and row_scale into the epilogue: y = row_scale * (Z @ (col_scale * x)).
- Encoder (calibration-free RTN, no LDLQ): L_ii = 1, or sqrt(act_sq_mean_i) given the
  calibration `act_sq_mean` [K] = E[x_i^2] (a diagonal Sigma_X). c is the origin's formula at
  R = bits. With a fixed width every column costs `bits` whatever its step, so waterfilling can
  only make a step coarser than the column's range needs, never buy bits elsewhere; a step finer
  than the range overflows the container. The encoder therefore takes
  alpha_i = max(c / L_ii, max_o |W[o, i]| / (2**(bits-1) - 1/2)) so codes fit, and per row picks
  T = f * max_i |W[o, i] / alpha_i| / (2**(bits-1) - 1/2) over clip factors f = 1 - j/40 (j < 28)
  with the least L-weighted squared error sum_i L_ii^2 (W - W_hat)^2; codes are clamped.
  WaterSIC's rate gain needs entropy-coded Z, which this container does not provide.
  Columns with act_sq_mean_i == 0 are dead (origin: zeroed): col_scale 0 and Z 0.
"""
from __future__ import annotations

import math

import torch

from ..bitpack import pack_cols, unpack_cols
from ..registry import register_codec, register_format
from ..spec import Decode, FormatSpec, Packing, ScaleLevel, SpecError, TensorField, Transform
from .prefixquant import sign_extend

BITS_CHOICES = (2, 3, 4, 5, 6, 7, 8)
CLIP_FACTORS = tuple(1 - j / 40 for j in range(28))


def build_watersic(bits: int = 4) -> FormatSpec:
    """WaterSIC: signed int codes of fixed width x per-row scale T x per-input-column step alpha (folded into x)."""
    if isinstance(bits, bool) or bits not in BITS_CHOICES:
        raise SpecError(f"watersic: option bits = {bits!r} is invalid; expected one of {list(BITS_CHOICES)}")
    if bits == 8:
        word, fpw, codes_shape = "int8", 1, ("N", "K")
    else:
        word, fpw, codes_shape = "int32", 32 // bits, ("N", "(K + fields_per_word - 1) // fields_per_word")
    return FormatSpec(
        name="watersic",
        family="watersic",
        packing=Packing(layout="watersic_fixed", word_dtype=word, field_bits=bits, order="lsb", axis="K",
                        straddle=False, fields_per_word=fpw),
        decode=Decode(kind="affine", bits=bits, signed=True, params=(("zero", 0), ("code", "twos_complement"))),
        tensors=(
            TensorField("qweight", word, codes_shape, "codes"),
            TensorField("row_scale", "float32", ("N",), "scales"),
            TensorField("col_scale", "float32", ("K",), "transform"),
        ),
        scales=(ScaleLevel("row_scale", "row", "float32", op="mul"),),
        transforms=(Transform("col_scale", side="input", placement="online", tensor="col_scale"),),
        params=(("bits", bits), ("fields_per_word", fpw)),
        description="W[o,i] = row_scale[o] * (Z[o,i] * col_scale[i]); y = row_scale * (Z @ (col_scale * x))",
    )


# -- pure-torch helpers (twins of the kernel helpers) -------------------------------------------

def _qhalf(bits: int) -> float:
    return 2 ** (bits - 1) - 0.5


def waterfilling_steps(W: torch.Tensor, bits: int, L: torch.Tensor) -> torch.Tensor:
    """Per-column steps alpha [K] (float32): WaterSIC's c / L_ii at R = bits, floored by the column
    range / (2**(bits-1) - 1/2) so codes fit; 0 for dead columns (L_ii == 0)."""
    W64, L64 = W.double(), L.double()
    live = L64 > 0
    sw = (W64 ** 2).mean(0)
    ok = live & (sw > 0)
    c = math.exp(torch.log(12 * sw[ok] * L64[ok] ** 2).mean().item() / 2 - bits * math.log(2)) if ok.any() else 1.0
    fit = W64.abs().amax(0) / _qhalf(bits)
    alpha = torch.where(live, torch.maximum(c / L64.clamp(min=1e-300), fit), torch.zeros_like(fit))
    return alpha.float()


def watersic_codes(W: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Round-to-nearest codes Z (int64) of W [N, K] on the grid row_scale[o] * col_scale[i], clamped to the
    signed `bits` range; 0 where the step is 0 (dead columns)."""
    step = row_scale[:, None] * col_scale[None, :]
    live = step > 0
    q = torch.round(W / torch.where(live, step, torch.ones_like(step)))
    q = q.clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return torch.where(live, q, torch.zeros_like(q)).to(torch.int64)


def sic_decode(Z: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor) -> torch.Tensor:
    """W = row_scale[o] * (Z * col_scale[i]) in fp32 (the origin's dequantize_zsic with Gamma in col_scale)."""
    return row_scale.float()[:, None] * (Z.float() * col_scale.float()[None, :])


def codes_f32_of_words(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Z as float32 [R, 32 // bits, C] of int32 words [R, C] holding 32 // bits two's complement fields LSB-first,
    computed as the Triton fast path does (twin of _sic_codes_f32 in templates/triton/decode/watersic.jinja):
    XOR with every field's sign bit gives u = Z + 2**(bits-1); field i stays at bit p (after a shift right by 16
    when it would reach bit 23) and is or-ed with the exponent bits of 2**23, reading as 2**23 + u * 2**p;
    one fused multiply-add by 2**-p minus (2**(23-p) + 2**(bits-1)) leaves Z (exact: float64 here, one rounding)."""
    per = 32 // bits
    xmask = 2 ** (bits - 1) * ((2 ** (bits * per) - 1) // (2 ** bits - 1))
    w = ((words.to(torch.int64) & 0xFFFFFFFF) ^ xmask)[:, None, :]
    pos = torch.arange(per, dtype=torch.int64)[None, :, None] * bits
    sh = torch.where(pos + bits > 23, 16, 0)
    p = pos - sh
    f = ((w >> sh) | 0x4B000000) & (((2 ** bits - 1) << p) | 0x4B000000)
    f32 = f.to(torch.int32).view(torch.float32).double()
    return (f32 * torch.pow(2.0, -p.double()) - (torch.pow(2.0, 23 - p.double()) + 2 ** (bits - 1))).float()


def row_scale_search(W: torch.Tensor, col_scale: torch.Tensor, bits: int, weight: torch.Tensor) -> torch.Tensor:
    """Per-row T [N] (float32): the clip factor in CLIP_FACTORS with the least `weight`-weighted squared
    error (first wins ties); rows that are all zero (on live columns) get T = 1."""
    live = col_scale > 0
    u = torch.where(live[None, :], W / torch.where(live, col_scale, torch.ones_like(col_scale))[None, :], 0.0)
    peak = u.abs().amax(1)
    best_t, best_err = None, None
    for f in CLIP_FACTORS:
        t = torch.where(peak > 0, f * peak / _qhalf(bits), torch.ones_like(peak))
        err = ((W - sic_decode(watersic_codes(W, t, col_scale, bits), t, col_scale)) ** 2 * weight).sum(1)
        if best_t is None:
            best_t, best_err = t, err
        else:
            better = err < best_err
            best_t, best_err = torch.where(better, t, best_t), torch.where(better, err, best_err)
    return best_t


def _calib_L(spec: FormatSpec, calib: dict, K: int) -> torch.Tensor:
    unknown = sorted(set(calib) - {"act_sq_mean"})
    if unknown:
        raise SpecError(f"{spec.name}: unexpected calibration inputs {unknown}; valid: ['act_sq_mean']")
    v = calib.get("act_sq_mean")
    if v is None:
        return torch.ones(K)
    try:
        v = torch.as_tensor(v, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise SpecError(f"{spec.name}: act_sq_mean is not convertible to a tensor: {e}") from e
    if tuple(v.shape) != (K,) or not torch.isfinite(v).all() or (v < 0).any():
        raise SpecError(f"{spec.name}: act_sq_mean has shape {tuple(v.shape)}; expected finite values >= 0 of shape "
                        f"({K},) (E[x_i^2] per input feature)")
    return v.sqrt().float()


class WaterSICCodec:
    """Calibration-free RTN on WaterSIC's per-row x per-column grid (see the module docstring)."""

    def quantize(self, spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
        bits = spec.param("bits")
        L = _calib_L(spec, calib, W.shape[1])
        col = waterfilling_steps(W, bits, L)
        row = row_scale_search(W, col, bits, L ** 2)
        Z = watersic_codes(W, row, col, bits)
        if bits == 8:
            qweight = Z.to(torch.int8)
        else:
            qweight = pack_cols(Z & (2 ** bits - 1), bits, 32)
        return {"qweight": qweight, "row_scale": row, "col_scale": col}

    def synthetic(self, spec: FormatSpec, N: int, K: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Uniform code words (every field is a valid two's complement code), T in [0.5, 1.5] (clip factors
        around 1) and positive steps alpha in [0.005, 0.015] (random_by_role would draw signed steps)."""
        bits = spec.param("bits")
        shape, _ = spec.tensor_schema(N, K)["qweight"]
        lo, hi = (-2 ** 7, 2 ** 7) if bits == 8 else (-2 ** 31, 2 ** 31)
        qweight = torch.randint(lo, hi, shape, generator=gen, dtype=torch.int8 if bits == 8 else torch.int32)
        return {"qweight": qweight, "row_scale": 0.5 + torch.rand(N, generator=gen),
                "col_scale": 0.005 + 0.01 * torch.rand(K, generator=gen)}

    def dequantize(self, spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
        bits = spec.param("bits")
        q = tensors["qweight"]
        Z = q.to(torch.int64) if bits == 8 else sign_extend(unpack_cols(q, bits, K, 32), bits)
        return sic_decode(Z, tensors["row_scale"], tensors["col_scale"])


register_format("watersic", build_watersic)
register_codec("watersic", WaterSICCodec())
