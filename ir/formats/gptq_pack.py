"""Pure-torch helpers of the GPTQ-style group-affine int formats (GPTQ, AutoRound, AWQ, EfficientQAT).

They compute one thing each and are the twins of the Triton decode helpers: unpacking codes and
zero points from int32 words, the fp16 affine dequant, and the round-to-nearest group encoder.
Orientation follows the origins: codes are [K, N] (in_features major), groups run along K.
"""
from __future__ import annotations

import torch

from ..bitpack import pack_cols, pack_rows, unpack_cols, unpack_rows
from ..spec import SpecError

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ: nibble i of a word holds column 8*j + AWQ_ORDER[i]
FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0 ** -14


# -- GPTQ / AutoRound: a contiguous LSB-first bit stream of 32-bit words (3-bit fields straddle) --
def gptq_pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [K, N] -> qweight int32 [K*bits/32, N]: field i at bit bits*i of the stream along K."""
    return pack_rows(codes, bits, straddle=bits == 3)


def gptq_unpack_codes(qweight: torch.Tensor, bits: int, K: int) -> torch.Tensor:
    """qweight int32 [K*bits/32, N] -> codes int64 [K, N]."""
    return unpack_rows(qweight, bits, K, straddle=bits == 3)


def gptq_pack_zeros(zeros: torch.Tensor, bits: int, zero_offset: int) -> torch.Tensor:
    """zeros [G, N] -> qzeros int32 [G, N*bits/32], storing (zero - zero_offset) mod 2**bits per field
    (zero_offset 1 is the GPTQ v1 / AutoGPTQ / AutoRound convention, 0 is GPTQ v2).

    Per field, as GPTQModel's safetensor dequant and its 3-bit loader shift v1 zero points. Its 2/4/8-bit
    module loader adds 0x11..1 to whole words instead: the same unless a zero point is 0 (stored as maxq),
    where the word add carries into the next field; the encoder only emits zero point 0 for a group with
    no negative weight."""
    return pack_cols((zeros - zero_offset) & ((1 << bits) - 1), bits, straddle=bits == 3)


def gptq_unpack_zeros(qzeros: torch.Tensor, bits: int, N: int, zero_offset: int) -> torch.Tensor:
    """qzeros int32 [G, N*bits/32] -> zero points int64 [G, N]: (field + zero_offset) mod 2**bits."""
    return (unpack_cols(qzeros, bits, N, straddle=bits == 3) + zero_offset) & ((1 << bits) - 1)


# -- EfficientQAT: 32//bits fields per word, never straddling (3-bit: 10 per word, 2 bits unused) --
def eqat_pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [K, N] -> qweight int32 [ceil(K/(32//bits)), N]; the last word's unused fields are 0."""
    return pack_rows(codes, bits)


def eqat_unpack_codes(qweight: torch.Tensor, bits: int, K: int) -> torch.Tensor:
    return unpack_rows(qweight, bits, K)


def eqat_pack_zeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """zeros [G, N] -> qzeros int32 [G, ceil(N/(32//bits))], stored as is (no offset)."""
    return pack_cols(zeros, bits)


def eqat_unpack_zeros(qzeros: torch.Tensor, bits: int, N: int) -> torch.Tensor:
    return unpack_cols(qzeros, bits, N)


# -- AutoAWQ GEMM: 8 nibbles per word along N, interleaved by AWQ_ORDER --
def _awq_columns(N: int) -> torch.Tensor:
    """Logical column stored at each packed field position (position 8*j + i holds 8*j + AWQ_ORDER[i])."""
    return (torch.arange(N).view(-1, 8)[:, list(AWQ_ORDER)]).reshape(-1)


def awq_pack_cols(codes: torch.Tensor) -> torch.Tensor:
    """codes [R, N] (4-bit) -> int32 [R, N/8] in the AutoAWQ nibble order."""
    return pack_cols(codes[:, _awq_columns(codes.shape[1])], 4)


def awq_unpack_cols(words: torch.Tensor, N: int) -> torch.Tensor:
    """int32 [R, N/8] -> codes int64 [R, N] in logical column order."""
    fields = unpack_cols(words, 4, N)
    out = torch.empty_like(fields)
    out[:, _awq_columns(N)] = fields
    return out


# -- decode and encode math shared by all four layouts --
def affine_dequant_fp16(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """fp16 s * (q - z), as the origins' torch paths compute it: the integer difference is exact in
    fp16 (|q - z| <= 255) and the product is rounded once to fp16."""
    return s.to(torch.float16) * (q - z).to(torch.float16)


def group_index(perm: torch.Tensor, group_size: int) -> torch.Tensor:
    """g_idx [K] of GPTQ act-order: the column quantized j-th (perm[j]) belongs to group j // group_size."""
    g_idx = torch.empty_like(perm)
    g_idx[perm] = torch.arange(perm.numel()) // group_size
    return g_idx


def minmax_scale_zero(x: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest range of each row of x [..., n] by GPTQ's quantizer rule -> (fp16 scale, int64 zero).

    The range always contains 0 (xmin <= 0 <= xmax), so the zero point lies in [0, maxq]. asym:
    scale = (xmax - xmin) / maxq, zero = round(-xmin / scale). sym: xmax = max(|xmin|, xmax),
    xmin = -xmax, zero = (maxq + 1) / 2 (GPTQ keeps xmin = 0 for a row with no negative value, which
    clips its top half; here such a row is symmetric too). An all-zero row gets the range [-1, 1] (as GPTQ does); a
    scale below the smallest normal fp16 is raised to it, so the stored fp16 scale never underflows.
    The zero point is computed from the stored fp16 scale, so encode and decode agree."""
    maxq = (1 << bits) - 1
    xmin = x.amin(dim=-1).clamp(max=0.0)
    xmax = x.amax(dim=-1).clamp(min=0.0)
    if sym:
        xmax = torch.maximum(-xmin, xmax)
        xmin = -xmax
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -1.0, xmin)
    xmax = torch.where(empty, 1.0, xmax)
    scale = ((xmax - xmin) / maxq).clamp(min=FP16_MIN_NORMAL)
    if bool((scale > FP16_MAX).any()):
        raise SpecError(f"a group's scale {float(scale.max()):.4g} overflows the fp16 scale "
                        f"(|W| must stay below about {FP16_MAX * maxq / 2:.4g} for {bits}-bit codes)")
    s16 = scale.to(torch.float16)
    if sym:
        zero = torch.full_like(xmin, (maxq + 1) // 2, dtype=torch.int64)
    else:
        zero = torch.round(-xmin / s16.float()).clamp(0, maxq).to(torch.int64)
    return s16, zero


def rtn_codes(x: torch.Tensor, s16: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes clamp(round(x / s) + zero, 0, maxq) of x against the stored fp16 scale (elementwise)."""
    q = torch.round(x / s16.float()) + zero
    return q.clamp(0, (1 << bits) - 1).to(torch.int64)
