"""Pure-torch bit packing helpers shared by the codecs (the twins of the Triton unpack helpers).

Conventions: `codes` are non-negative integer tensors; packing runs along dim 0 ("rows") of a
2-D tensor, LSB-first (the first field in the lowest bits) unless `msb_first`. Words are returned
as the signed torch dtype of the word width (int32 / int16 / uint8) with the same bit pattern.
"""
from __future__ import annotations

import torch

_WORD = {8: torch.uint8, 16: torch.int16, 32: torch.int32}


def _to_word_dtype(words64: torch.Tensor, word_bits: int) -> torch.Tensor:
    """int64 values in [0, 2**word_bits) -> the word dtype, preserving the bit pattern."""
    if word_bits == 8:
        return words64.to(torch.uint8)
    signed = torch.where(words64 >= 2 ** (word_bits - 1), words64 - 2 ** word_bits, words64)
    return signed.to(_WORD[word_bits])


def _from_word_dtype(words: torch.Tensor, word_bits: int) -> torch.Tensor:
    """A word tensor -> int64 values in [0, 2**word_bits)."""
    w = words.to(torch.int64)
    return w & ((1 << word_bits) - 1)


def pack_rows(codes: torch.Tensor, bits: int, word_bits: int = 32, msb_first: bool = False,
              straddle: bool = False) -> torch.Tensor:
    """Pack `codes` [R, C] along dim 0 into words [ceil(R*bits/word_bits), C] (straddle) or
    [ceil(R/(word_bits//bits)), C] (fields never cross a word; leftover high bits are zero)."""
    codes = codes.to(torch.int64)
    R, C = codes.shape
    if (codes < 0).any() or (codes >= (1 << bits)).any():
        raise ValueError(f"pack_rows: codes must lie in [0, {1 << bits}) for {bits}-bit fields")
    if straddle:
        n_words = -(-R * bits // word_bits)
        words = torch.zeros(n_words, C, dtype=torch.int64)
        for r in range(R):
            bit = r * bits
            w, s = divmod(bit, word_bits)
            words[w] |= (codes[r] << s) & ((1 << word_bits) - 1)
            if s + bits > word_bits:  # the field spills into the next word
                words[w + 1] |= codes[r] >> (word_bits - s)
        return _to_word_dtype(words, word_bits)
    per = word_bits // bits
    n_words = -(-R // per)
    padded = torch.zeros(n_words * per, C, dtype=torch.int64)
    padded[:R] = codes
    padded = padded.view(n_words, per, C)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    if msb_first:
        shifts = (word_bits - bits) - shifts
    words = (padded << shifts.view(1, per, 1)).sum(dim=1)
    return _to_word_dtype(words, word_bits)


def unpack_rows(words: torch.Tensor, bits: int, rows: int, word_bits: int = 32, msb_first: bool = False,
                straddle: bool = False) -> torch.Tensor:
    """Inverse of `pack_rows`: words -> codes [rows, C] as int64."""
    w = _from_word_dtype(words, word_bits)
    mask = (1 << bits) - 1
    if straddle:
        out = torch.empty(rows, w.shape[1], dtype=torch.int64)
        for r in range(rows):
            bit = r * bits
            i, s = divmod(bit, word_bits)
            v = w[i] >> s
            if s + bits > word_bits:
                v = v | (w[i + 1] << (word_bits - s))
            out[r] = v & mask
        return out
    per = word_bits // bits
    shifts = torch.arange(per, dtype=torch.int64) * bits
    if msb_first:
        shifts = (word_bits - bits) - shifts
    vals = (w.unsqueeze(1) >> shifts.view(1, per, 1)) & mask
    return vals.reshape(-1, w.shape[1])[:rows]


def pack_cols(codes: torch.Tensor, bits: int, word_bits: int = 32, msb_first: bool = False,
              straddle: bool = False) -> torch.Tensor:
    """Pack along dim 1: [R, C] -> [R, words]."""
    return pack_rows(codes.t(), bits, word_bits, msb_first, straddle).t().contiguous()


def unpack_cols(words: torch.Tensor, bits: int, cols: int, word_bits: int = 32, msb_first: bool = False,
                straddle: bool = False) -> torch.Tensor:
    return unpack_rows(words.t(), bits, cols, word_bits, msb_first, straddle).t().contiguous()


def magic_u2f(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Exact float of small unsigned integer codes built by bits, the twin of the kernels' conversion-free
    decode: float32 (2**23 + q) from the bits 0x4B000000 | q (q < 2**23), float16 (1024 + q) from
    0x6400 | q (q < 1024), each minus its bias. On sm80/sm90 an int->float conversion runs at a quarter of
    the rate of the LOP3 + FADD this takes, so a GEMV that converts every weight is conversion-bound."""
    q = codes.to(torch.int32)
    if dtype == torch.float32:
        if int(q.min()) < 0 or int(q.max()) >= 1 << 23:
            raise ValueError(f"magic_u2f: float32 needs 0 <= q < 2**23, got [{int(q.min())}, {int(q.max())}]")
        return (q | 0x4B000000).view(torch.float32) - 8388608.0
    if dtype == torch.float16:
        if int(q.min()) < 0 or int(q.max()) >= 1024:
            raise ValueError(f"magic_u2f: float16 needs 0 <= q < 1024, got [{int(q.min())}, {int(q.max())}]")
        return (q | 0x6400).to(torch.int16).view(torch.float16) - 1024.0
    raise ValueError(f"magic_u2f: dtype must be torch.float32 or torch.float16, got {dtype}")


def part_place(bits: int) -> tuple[int, int, int]:
    """(P0, NW, J0): where the M=1 gemv's part_code places the fields of an LSB-first int32 word of 32 // bits
    fields (the templates render with this function, so kernel and twin share it): NW fields per rotation of the
    word at mantissa bits P0, P0 + bits, ... with 12 <= P0 (offsets c = 2**(23 - p) <= 2**11), counting from
    field J0 = P0 / bits, unrotated when bits divides P0 (else J0 = 0); P0 takes the fewest rotations per word,
    then the smallest c."""
    per = 32 // bits
    best = (99, 0)
    for p0 in range(12, 24 - bits):
        nw = (23 - p0) // bits
        cost = -(-per // nw) - (1 if p0 % bits == 0 else 0)
        if cost <= best[0]:
            best = (cost, p0)
    p0 = best[1]
    return p0, (23 - p0) // bits, p0 // bits if p0 % bits == 0 else 0


def part_position(bits: int, j: int) -> int:
    """Mantissa bit of field j under part_place(bits)."""
    p0, nw, j0 = part_place(bits)
    return p0 + bits * (((j - j0) % (32 // bits)) % nw)


def part_code(words: torch.Tensor, j: int, bits: int) -> torch.Tensor:
    """float32 c + q for field q = j of int32 words, c = 2**(23 - p), p = part_position(bits, j): the word rotated
    right by (bits * j - p) mod 32 puts the field at mantissa bit p; masked, with the exponent of 2**(23 - p) set,
    the bits read as c + q exactly (twin of the gemv's part_code: a rotate and one LOP3, no int->float convert)."""
    p = part_position(bits, j)
    r = (bits * j - p) % 32
    w = words.to(torch.int64) & 0xFFFFFFFF
    v = ((w >> r) | (w << (32 - r))) & 0xFFFFFFFF
    f = (v & (((1 << bits) - 1) << p)) | ((150 - p) << 23)
    return f.to(torch.int32).view(torch.float32)
