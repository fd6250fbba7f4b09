"""GGUF block formats (llama.cpp ggml): Q4_0, Q8_0, Q4_K, Q2_K.

Canonical layout: one uint8 tensor `blocks` [N, (K // block_size) * type_size]. Row n is the GGUF
tensor row n: the `block_q*` structs of ggml-common.h back to back along K, fp16 fields
little-endian, so a GGUF tensor's bytes load without conversion.

Decoders compute in float32 exactly as ggml's dequantize_row_* (and gguf-py's numpy decoders) do.
Encoders are ggml's reference quantizers quantize_row_{q4_0,q8_0,q4_K,q2_K}_ref (no importance
matrix), evaluated in strict float32 in the C statement order.
Source read: ggml-org/llama.cpp @ 01243c5, ggml/src/ggml-common.h and ggml/src/ggml-quants.c.

Everything the decoder needs is in the spec (`decode.params`): the struct fields and their byte
offsets, the code order inside `qs`, the code offset, and for K-quants the bit map of the packed
sub-block scales and mins. `dequantize_blocks` reads only those, so the IR is the single truth.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register_codec, register_format
from ..spec import Decode, FormatSpec, Packing, ScaleLevel, SpecError, TensorField

FAMILY = "gguf"
_QK_K = 256
_F32 = torch.float32


# ---------------------------------------------------------------------------------------------
# The four block types, as data
# ---------------------------------------------------------------------------------------------
def _q4k_scale_map() -> tuple[tuple, tuple]:
    """get_scale_min_k4 as bit pieces (byte in `scales`, shift, width, dest_shift) per sub-block."""
    sc, m = [], []
    for j in range(8):
        if j < 4:
            sc.append(((j, 0, 6, 0),))
            m.append(((j + 4, 0, 6, 0),))
        else:
            sc.append(((j + 4, 0, 4, 0), (j - 4, 6, 2, 4)))
            m.append(((j + 4, 4, 4, 0), (j, 6, 2, 4)))
    return tuple(sc), tuple(m)


def _q2k_scale_map() -> tuple[tuple, tuple]:
    """Q2_K: scales[j] holds the sub-block scale in its low nibble and the min in its high nibble."""
    return tuple(((j, 0, 4, 0),) for j in range(16)), tuple(((j, 4, 4, 0),) for j in range(16))


_Q4K_SC_MAP, _Q4K_M_MAP = _q4k_scale_map()
_Q2K_SC_MAP, _Q2K_M_MAP = _q2k_scale_map()


@dataclass(frozen=True)
class _GGMLType:
    name: str             # ggml type name
    type_id: int          # GGMLQuantizationType value
    block_size: int       # weights per block
    type_size: int        # bytes per block
    bits: int             # code bits
    signed: bool          # codes are two's complement (Q8_0)
    zero: int             # offset subtracted from the code before scaling (Q4_0: 8)
    fields: tuple         # (name, byte offset, dtype, count) in struct order
    qs_plane: int         # see _CODE_ORDER
    sub_block: int = 0    # K-quants: weights per sub-block scale/min
    sub_bits: int = 0
    sc_map: tuple = ()
    m_map: tuple = ()
    formula: str = ""


_Q4_0 = _GGMLType("Q4_0", 2, 32, 18, 4, False, 8, (("d", 0, "float16", 1), ("qs", 2, "uint8", 16)),
                  qs_plane=16, formula="y = d * (q - 8)")
_Q8_0 = _GGMLType("Q8_0", 8, 32, 34, 8, True, 0, (("d", 0, "float16", 1), ("qs", 2, "int8", 32)),
                  qs_plane=32, formula="y = d * q")
_Q4_K = _GGMLType("Q4_K", 12, _QK_K, 144, 4, False, 0,
                  (("d", 0, "float16", 1), ("dmin", 2, "float16", 1), ("scales", 4, "uint8", 12),
                   ("qs", 16, "uint8", 128)),
                  qs_plane=32, sub_block=32, sub_bits=6, sc_map=_Q4K_SC_MAP, m_map=_Q4K_M_MAP,
                  formula="y = (d * sc) * q - (dmin * m)")
_Q2_K = _GGMLType("Q2_K", 10, _QK_K, 84, 2, False, 0,
                  (("scales", 0, "uint8", 16), ("qs", 16, "uint8", 64), ("d", 80, "float16", 1),
                   ("dmin", 82, "float16", 1)),
                  qs_plane=32, sub_block=16, sub_bits=4, sc_map=_Q2K_SC_MAP, m_map=_Q2K_M_MAP,
                  formula="y = (d * sc) * q - (dmin * m)")

_CODE_ORDER = ("element e of a block, with P = 8 // bits codes per byte: plane p = (e // qs_plane) % P, "
               "byte qs[(e // (qs_plane * P)) * qs_plane + e % qs_plane], bits [p*bits, (p+1)*bits)")
_MAP_ORDER = ("per sub-block, pieces (byte in scales, shift, width, dest_shift): "
              "value |= ((scales[byte] >> shift) & (2**width - 1)) << dest_shift")


def _build(t: _GGMLType) -> FormatSpec:
    per_byte = 8 // t.bits
    dparams = [("ggml_type", t.name), ("ggml_type_id", t.type_id), ("block_size", t.block_size),
               ("type_size", t.type_size), ("fields", t.fields), ("zero", t.zero), ("qs_plane", t.qs_plane),
               ("code_order", _CODE_ORDER), ("compute_dtype", "float32"), ("formula", t.formula)]
    if t.sub_block:
        dparams += [("sub_block", t.sub_block), ("sub_bits", t.sub_bits), ("sc_map", t.sc_map),
                    ("m_map", t.m_map), ("map_order", _MAP_ORDER)]
        super_d = ScaleLevel("d", "group", "float16", "mul", "K", t.block_size)
        super_m = ScaleLevel("dmin", "group", "float16", "mul", "K", t.block_size)
        scales = (ScaleLevel("sc", "group", "uint8", "mul", "K", t.sub_block, t.sub_bits, super_d),
                  ScaleLevel("m", "group", "uint8", "affine_min", "K", t.sub_block, t.sub_bits, super_m))
    else:
        scales = (ScaleLevel("d", "group", "float16", "mul", "K", t.block_size),)
    struct = "; ".join(f"{dt} {n}[{c}] @{off}" for n, off, dt, c in t.fields)
    return FormatSpec(
        name=f"gguf_{t.name.lower()}",
        family=FAMILY,
        packing=Packing("gguf_block", "uint8", t.bits, "lsb", "K", False, per_byte),
        decode=Decode("affine", t.bits, t.signed, params=tuple(dparams)),
        tensors=(TensorField("blocks", "uint8", ("N", "K // block_size * type_size"), "blocks"),),
        scales=scales,
        params=(("block_size", t.block_size), ("type_size", t.type_size), ("ggml_type", t.name),
                ("k_multiple_reason", f"a GGUF {t.name} block holds {t.block_size} consecutive weights along K")),
        k_multiple=t.block_size,
        description=f"GGUF {t.name} block ({t.type_size} B per {t.block_size} weights): {struct}; {t.formula}",
    )


def build_gguf_q4_0() -> FormatSpec:
    """GGUF Q4_0: 32-weight blocks {fp16 d; 16 B nibbles}, y = d*(q-8) (4.5 bpw)."""
    return _build(_Q4_0)


def build_gguf_q8_0() -> FormatSpec:
    """GGUF Q8_0: 32-weight blocks {fp16 d; int8 qs[32]}, y = d*q (8.5 bpw)."""
    return _build(_Q8_0)


def build_gguf_q4_k() -> FormatSpec:
    """GGUF Q4_K: 256-weight super-blocks, 6-bit scale/min per 32 under fp16 d/dmin (4.5 bpw)."""
    return _build(_Q4_K)


def build_gguf_q2_k() -> FormatSpec:
    """GGUF Q2_K: 256-weight super-blocks, 4-bit scale/min per 16 under fp16 d/dmin (2.625 bpw)."""
    return _build(_Q2_K)


# ---------------------------------------------------------------------------------------------
# Decode helpers (pure torch; twins of the Triton helpers)
# ---------------------------------------------------------------------------------------------
def read_f16(raw: torch.Tensor) -> torch.Tensor:
    """Little-endian fp16 field bytes [B, 2] (uint8) -> float32 [B], as GGML_FP16_TO_FP32."""
    return raw.contiguous().view(torch.float16).reshape(-1).to(_F32)


def unpack_codes(qs: torch.Tensor, bits: int, plane: int, signed: bool = False) -> torch.Tensor:
    """`qs` bytes [B, nbytes] -> codes int64 [B, nbytes * 8 // bits] in element order (see _CODE_ORDER)."""
    B, nbytes = qs.shape
    per_byte = 8 // bits
    q = qs.to(torch.int64).view(B, nbytes // plane, 1, plane)
    shifts = (torch.arange(per_byte, dtype=torch.int64) * bits).view(1, 1, per_byte, 1)
    codes = ((q >> shifts) & ((1 << bits) - 1)).reshape(B, -1)
    if signed:
        codes = codes - ((codes >> (bits - 1)) << bits)
    return codes


def pack_codes(codes: torch.Tensor, bits: int, plane: int) -> torch.Tensor:
    """Inverse of `unpack_codes` for unsigned codes: [B, block] -> uint8 [B, block * bits // 8]."""
    B, n = codes.shape
    per_byte = 8 // bits
    c = (codes.to(torch.int64) & ((1 << bits) - 1)).view(B, n // (plane * per_byte), per_byte, plane)
    shifts = (torch.arange(per_byte, dtype=torch.int64) * bits).view(1, 1, per_byte, 1)
    return (c << shifts).sum(dim=2).reshape(B, -1).to(torch.uint8)


def unpack_bit_pieces(raw: torch.Tensor, pieces: tuple) -> torch.Tensor:
    """Packed sub-block scales/mins: bytes [B, nbytes] -> int64 [B, len(pieces)] (see _MAP_ORDER)."""
    r = raw.to(torch.int64)
    cols = []
    for value_pieces in pieces:
        v = torch.zeros(r.shape[0], dtype=torch.int64)
        for byte, shift, width, dest in value_pieces:
            v = v | (((r[:, byte] >> shift) & ((1 << width) - 1)) << dest)
        cols.append(v)
    return torch.stack(cols, dim=1)


def with_magic(half: torch.Tensor) -> torch.Tensor:
    """The low 16 bits of int32 `half` under the fp32 exponent bits of 2**23 (0x4B00xxxx); twin of `_with_magic`."""
    return (half.to(torch.int32) & 0xFFFF) | 0x4B000000


def magic_field(src: torch.Tensor, shift, bits: int) -> torch.Tensor:
    """q * 2**shift as float32 for the `bits`-wide field at bit `shift` (shift + bits <= 16) of a `with_magic`
    word, without an int->float conversion: the field under the exponent bits reads as 2**23 + q * 2**shift.
    Twin of the Triton helper `_magic_field` of the GGUF fast decodes (templates/triton/decode/gguf.jinja)."""
    mask = (((1 << bits) - 1) << torch.as_tensor(shift, dtype=torch.int32)) | 0x4B000000
    return (src.to(torch.int32) & mask).view(torch.float32) - 8388608.0


def block_fields(spec: FormatSpec) -> dict[str, tuple[int, int]]:
    """{field name: (byte offset, byte count)} from the spec's struct description."""
    size = {"float16": 2, "uint8": 1, "int8": 1}
    return {n: (off, c * size[dt]) for n, off, dt, c in spec.decode.param("fields")}


def dequantize_blocks(spec: FormatSpec, blocks: torch.Tensor) -> torch.Tensor:
    """GGUF blocks uint8 [B, type_size] -> float32 [B, block_size], as ggml's dequantize_row_*."""
    dec = spec.decode
    f = block_fields(spec)

    def field(name: str) -> torch.Tensor:
        off, n = f[name]
        return blocks[:, off:off + n]

    q = unpack_codes(field("qs"), dec.bits, dec.param("qs_plane"), dec.signed)
    d = read_f16(field("d"))
    sub = dec.param("sub_block", 0)
    if not sub:
        return (q - dec.param("zero")).to(_F32) * d[:, None]
    dmin = read_f16(field("dmin"))
    sc = unpack_bit_pieces(field("scales"), dec.param("sc_map"))
    m = unpack_bit_pieces(field("scales"), dec.param("m_map"))
    d_sub = (d[:, None] * sc.to(_F32)).repeat_interleave(sub, dim=1)
    m_sub = (dmin[:, None] * m.to(_F32)).repeat_interleave(sub, dim=1)
    return d_sub * q.to(_F32) - m_sub


# ---------------------------------------------------------------------------------------------
# Encode helpers: ggml's scalar float32 arithmetic, vectorized over blocks
# ---------------------------------------------------------------------------------------------
def nearest_int(f: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int: the 1.5*2**23 float trick (round half to even for |f| < 2**22), bit for bit."""
    i = (f.to(_F32) + 12582912.0).view(torch.int32).to(torch.int64)
    return (i & 0x007FFFFF) - 0x00400000


def roundf(f: torch.Tensor) -> torch.Tensor:
    """C roundf (half away from zero) on float32, without the floor(x + 0.5) double-rounding error."""
    a = f.abs()
    fl = a.floor()
    return torch.sign(f) * (fl + (2 * (a - fl)).floor())


def _f32(v: float) -> torch.Tensor:
    """A C float constant (e.g. 0.1f) as a float32 scalar tensor. Divide by or into these, never by a
    Python number: torch computes `number / tensor` as reciprocal(tensor) * number (two roundings)."""
    return torch.tensor(v, dtype=_F32)


def sqrtf(v: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt (torch's vectorized float32 sqrt is not, on some CPUs); the
    float64 root rounded to float32 is exact, as 53 >= 2*24 + 2."""
    return torch.sqrt(v.to(torch.float64)).to(_F32)


def _seq_sum(t: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over dim 0 left to right from `start` (default 0.0f), as a C `for (i...) s += t[i]` loop:
    float32 addition is not associative, so the order is kept."""
    acc = torch.zeros(t.shape[1:], dtype=_F32) if start is None else start.clone()
    for i in range(t.shape[0]):
        acc.add_(t[i])
    return acc


def make_qkx2_quants(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ggml's make_qkx2_quants over many sub-blocks at once.

    x, w: float32 [n, S] (element i of sub-block s at [i, s]). Returns (scale [S], the_min [S],
    L int64 [n, S]) such that x ~ scale * L - the_min, searching nstep+1 candidate scales with a
    weighted least-squares refit of (scale, min) and keeping the best weighted error."""
    mn0 = torch.clamp(x.amin(dim=0), max=0.0)
    mx = x.amax(dim=0)
    flat = mx == mn0
    sum_w = _seq_sum(w[1:], start=w[0])
    sum_x = _seq_sum(w[1:] * x[1:], start=w[0] * x[0])

    def err_of(scale, mn, lf):
        diff = scale * lf + mn - x
        return _seq_sum(w * (diff.abs() if use_mad else diff * diff))

    iscale = _f32(nmax) / (mx - mn0)
    scale = _f32(1.0) / iscale
    L = nearest_int(iscale * (x - mn0)).clamp(0, nmax)
    best = err_of(scale, mn0, L.to(_F32))
    mn = mn0
    for step in range(nstep + 1):
        iscale = (_f32(rmin) + _f32(rdelta) * step + nmax) / (mx - mn)
        laux = nearest_int(iscale * (x - mn)).clamp(0, nmax)
        lf = laux.to(_F32)
        wl = w * lf
        sum_l, sum_l2, sum_xl = _seq_sum(torch.stack((wl, wl * lf, wl * x), dim=1)).unbind(0)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        this_min = torch.where(pos, torch.zeros_like(this_min), this_min)
        this_scale = torch.where(pos, sum_xl / sum_l2, this_scale)
        cur = err_of(this_scale, this_min, lf)
        better = (D > 0) & (cur < best)
        L = torch.where(better, laux, L)
        best = torch.where(better, cur, best)
        scale = torch.where(better, this_scale, scale)
        mn = torch.where(better, this_min, mn)
    L = torch.where(flat, torch.zeros_like(L), L)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    the_min = -torch.where(flat, mn0, mn)
    return scale, the_min, L


def k_requantize(x: torch.Tensor, d_sub: torch.Tensor, m_sub: torch.Tensor, nmax: int) -> torch.Tensor:
    """The K-quant final pass: codes = clamp(nearest_int((x + m_sub) / d_sub), 0, nmax) given the stored
    (fp16 super-scale x integer sub-scale) d_sub and m_sub, broadcast against x."""
    return nearest_int((x + m_sub) / d_sub).clamp(0, nmax)


def _to_f16_bytes(v: torch.Tensor) -> torch.Tensor:
    """float32 [B] -> GGML_FP32_TO_FP16 bytes [B, 2] (round to nearest even)."""
    return v.to(torch.float16).view(torch.uint8).reshape(-1, 2)


def quantize_q4_0(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """quantize_row_q4_0_ref on blocks x [B, 32]: d = max/-8 (max: the first largest |x|, signed)."""
    ax = x.abs()
    amax, idx = ax.amax(dim=1), ax.argmax(dim=1)  # argmax: the first largest |x|, as the C scan keeps
    mx = torch.where(amax > 0, x.gather(1, idx[:, None])[:, 0], torch.zeros_like(amax))
    d = mx / _f32(-8.0)
    inv = torch.where(d != 0, _f32(1.0) / d, torch.zeros_like(d))
    q = (x * inv[:, None] + 8.5).trunc().to(torch.int64).clamp(max=15)
    return {"d": _to_f16_bytes(d), "qs": pack_codes(q, 4, 16)}


def quantize_q8_0(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """quantize_row_q8_0_ref on blocks x [B, 32]: d = amax/127, q = roundf(x/d)."""
    d = x.abs().amax(dim=1) / _f32(127.0)
    inv = torch.where(d != 0, _f32(1.0) / d, torch.zeros_like(d))
    q = roundf(x * inv[:, None]).to(torch.int8)
    return {"d": _to_f16_bytes(d), "qs": q.view(torch.uint8)}


def _k_super(scales: torch.Tensor, mins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest sub-block scale and min per super-block [B]; +0.0 when none is > 0 (C: a running
    `if (v > max) max = v` from 0, so a -0.0 never gets through)."""
    def run_max(v):
        m = v.amax(dim=1)
        return torch.where(m > 0, m, torch.zeros_like(m))
    return run_max(scales), run_max(mins)


def quantize_q4_k(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """quantize_row_q4_K_ref on super-blocks x [B, 256]."""
    B = x.shape[0]
    xs = x.reshape(B * 8, 32).t().contiguous()  # [32, S]: element-major, one column per sub-block
    av_x = sqrtf(_seq_sum(xs * xs) / _f32(32.0))
    w = av_x + xs.abs()
    scales, mins, L = make_qkx2_quants(xs, w, 15, -1.0, 0.1, 20, False)
    scales, mins, L = scales.view(B, 8), mins.view(B, 8), L.t().reshape(B, 256)
    max_scale, max_min = _k_super(scales, mins)
    inv_scale = torch.where(max_scale > 0, _f32(63.0) / max_scale, torch.zeros_like(max_scale))
    inv_min = torch.where(max_min > 0, _f32(63.0) / max_min, torch.zeros_like(max_min))
    ls = (nearest_int(inv_scale[:, None] * scales) & 0xFF).clamp(max=63)  # uint8_t, then MIN(63, .)
    lm = (nearest_int(inv_min[:, None] * mins) & 0xFF).clamp(max=63)
    raw = torch.zeros(B, 12, dtype=torch.int64)
    raw[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    raw[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    raw[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    d16, dmin16 = _to_f16_bytes(max_scale / _f32(63.0)), _to_f16_bytes(max_min / _f32(63.0))
    raw8 = raw.to(torch.uint8)
    sc, m = unpack_bit_pieces(raw8, _Q4_K.sc_map), unpack_bit_pieces(raw8, _Q4_K.m_map)
    L = _k_requantize_blocks(x, L, read_f16(d16), read_f16(dmin16), sc, m, 32, 15)
    return {"d": d16, "dmin": dmin16, "scales": raw8, "qs": pack_codes(L, 4, 32)}


def quantize_q2_k(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """quantize_row_q2_K_ref on super-blocks x [B, 256]."""
    B = x.shape[0]
    xs = x.reshape(B * 16, 16).t().contiguous()  # [16, S]
    scales, mins, L = make_qkx2_quants(xs, xs.abs(), 3, -0.5, 0.1, 15, True)
    scales, mins, L = scales.view(B, 16), mins.view(B, 16), L.t().reshape(B, 256)
    max_scale, max_min = _k_super(scales, mins)
    has_s, has_m = max_scale > 0, max_min > 0
    # C: y.scales[j] = l (int -> uint8); y.scales[j] |= (l << 4) (truncated to 8 bits); no clamp to 15.
    ls = torch.where(has_s[:, None], nearest_int((_f32(15.0) / max_scale)[:, None] * scales) & 0xFF, 0)
    lm = torch.where(has_m[:, None], (nearest_int((_f32(15.0) / max_min)[:, None] * mins) << 4) & 0xFF, 0)
    raw8 = (ls | lm).to(torch.uint8)
    zero = torch.zeros_like(max_scale)
    d16 = _to_f16_bytes(torch.where(has_s, max_scale / _f32(15.0), zero))
    dmin16 = _to_f16_bytes(torch.where(has_m, max_min / _f32(15.0), zero))
    sc, m = unpack_bit_pieces(raw8, _Q2_K.sc_map), unpack_bit_pieces(raw8, _Q2_K.m_map)
    L = _k_requantize_blocks(x, L, read_f16(d16), read_f16(dmin16), sc, m, 16, 3)
    return {"scales": raw8, "qs": pack_codes(L, 2, 32), "d": d16, "dmin": dmin16}


def _k_requantize_blocks(x, L, d, dmin, sc, m, sub: int, nmax: int) -> torch.Tensor:
    """Re-derive the codes from the stored scales; sub-blocks whose d*sc is 0 keep the search codes."""
    B = x.shape[0]
    d_sub = (d[:, None] * sc.to(_F32))[:, :, None]       # [B, n_sub, 1]
    m_sub = (dmin[:, None] * m.to(_F32))[:, :, None]
    xb = x.view(B, -1, sub)
    q = k_requantize(xb, d_sub, m_sub, nmax)
    return torch.where(d_sub != 0, q, L.view(B, -1, sub)).reshape(B, -1)


_ENCODERS = {"Q4_0": quantize_q4_0, "Q8_0": quantize_q8_0, "Q4_K": quantize_q4_k, "Q2_K": quantize_q2_k}


# ---------------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------------
class GGUFCodec:
    """Canonical GGUF blocks <-> float32 weights."""

    def quantize(self, spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
        if calib:
            raise SpecError(f"{spec.name}: the GGUF reference quantizer takes no calibration data "
                            f"(got {sorted(calib)}); importance-matrix quantization is not implemented")
        N, K = W.shape
        bs, ts = spec.param("block_size"), spec.param("type_size")
        parts = _ENCODERS[spec.param("ggml_type")](W.reshape(-1, bs).to(_F32))
        f = block_fields(spec)
        order = sorted(f, key=lambda n: f[n][0])
        blocks = torch.cat([parts[n].reshape(-1, f[n][1]) for n in order], dim=1)
        return {"blocks": blocks.reshape(N, K // bs * ts)}

    def synthetic(self, spec: FormatSpec, N: int, K: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Random block bytes with every fp16 field (d, dmin) overwritten by a finite positive value,
        fast at real shapes (the K-quant reference search is not)."""
        ts = spec.param("type_size")
        blocks = torch.randint(0, 256, (N * (K // spec.param("block_size")), ts), generator=gen, dtype=torch.uint8)
        for name, dtype, (off, count) in ((n, dt, block_fields(spec)[n]) for n, _, dt, _ in spec.decode.param("fields")):
            if dtype == "float16":
                vals = (0.0005 + 0.001 * torch.rand(blocks.shape[0], generator=gen)).to(torch.float16)
                blocks[:, off:off + count] = vals.view(torch.uint8).reshape(-1, 2)
        return {"blocks": blocks.reshape(N, -1)}

    def dequantize(self, spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
        blocks = tensors["blocks"].reshape(-1, spec.param("type_size"))
        return dequantize_blocks(spec, blocks).reshape(N, K)


register_format("gguf_q4_0", build_gguf_q4_0)
register_format("gguf_q8_0", build_gguf_q8_0)
register_format("gguf_q4_k", build_gguf_q4_k)
register_format("gguf_q2_k", build_gguf_q2_k)
register_codec(FAMILY, GGUFCodec())
