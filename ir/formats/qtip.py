"""QTIP (Cornell-RelaxML/qtip @ e90c668): bitshift-trellis quantization with incoherence processing.

Stored tensors (the QuantizedLinear buffers of a QTIP checkpoint):
- `trellis` int16 [(N/16)*(K/16), 16*bits]: one row per 16x16 tile (tiles row-major over
  (N/16, K/16)), 256*bits bits read MSB-first from uint16 words, a tail-biting trellis with L=16
  state bits and bits*V new bits per state: state t = stream bits [t*bits*V, t*bits*V + 16)
  wrapping around; each state decodes to V consecutive values of the tile's sequence.
- `tlut` float16 [2**Q, V] (HYB only), `SU` float16 [K], `SV` float32 [N].

Decode: W = diag(SV) H_N What H_K diag(SU) with H the normalized Sylvester Hadamard matrix (QTIP
applies them to activations: y = SV * H_N(What (H_K (SU * x)))).

Two layouts, chosen the way QTIP's own `has_kernel` chooses them (HYB, L=16, V=2, Q=9, 16x16
tiles, bits 2..4 is the CUDA-kernel configuration; everything else is not):
- "qtip_kernel": the tile's 256 values are in m16n8k16 mma order (sequence position
  j = 32a+8b+4c+2d+e is tile row 8d+a, column 8c+2b+e; QTIP's LDLQ `_PERMUTE`), and the words
  of each 2x2 block of tiles are interleaved (lib/algo/finetune.py's swizzle before saving;
  lib/utils/kernel_decompress.py undoes it). K and N must be multiples of 32.
- "qtip_tile": values row-major in the tile, words as packed (`bitshift.pack_trellis`).

Code functions (lib/codebook/bitshift.py): 1MAD and 3INST (V=1, computed) and HYB
(`quantlut_sym`: tlut row from bits 6.. of s*(s+1), first value negated when bit 15 is set).

Only power-of-two N and K: QTIP's get_hadK also builds Hadamards of size 2^k * {12, 20, 28, 36, 52,
60, 108, 116, 124, 140, 156, 172} from stored matrices; those are not supported here (SpecError).

Encoder: random signs SU, SV (seeded), the rotated weight H_N diag(SV) W diag(SU) H_K scaled to
0.9 x the code's RMS (QTIP's example `--scale_override 0.9`; the scale goes into SV), then a
tail-biting Viterbi per tile (two passes, QTIP's scheme) with no Hessian (plain MSE, no LDLQ).
HYB uses a fixed table, not a trained one: 2**Q points at Rayleigh-quantile radii and golden-angle
angles (V=2) or half-normal quantiles (V=1). Cost: two Viterbi passes per tile, each 256/V steps
over 65536 states. Measured (Gaussian W): 4096x4096 K=2 HYB encodes in 16 s on one H200
(`device="cuda"`; K=3/4 15 s, 1MAD 31 s); on 2 CPU threads of a Xeon 512x512 takes 10.5 s, so
4096x4096 takes about 11 min (HYB, V=2) and about 50 min for V=1 codes (1MAD/3INST: 256 steps).
"""
from __future__ import annotations

import math

import torch

from ..registry import register_codec, register_format
from ..spec import Decode, FormatSpec, Packing, SpecError, TensorField, Transform
from ..trellis import (
    INST3_ADD,
    INST3_MASK,
    INST3_MUL,
    INST3_XOR,
    MAD_ADD,
    MAD_BIAS,
    MAD_DIV,
    MAD_MUL,
    code_1mad,
    code_3inst,
    code_hyb,
    pack_trellis,
    trellis_states,
    viterbi_tailbiting,
)

CODES = ("hyb", "1mad", "3inst")
STATE_BITS, TILE = 16, 16
SCALE_OVERRIDE = 0.9


def build_qtip(K: int = 2, V: int | None = None, L: int = 16, code: str = "hyb", Q: int | None = None) -> FormatSpec:
    """QTIP bitshift trellis (L=16, 16x16 tiles, K bits/weight) with HYB/1MAD/3INST codes and RHT signs SU/SV."""
    if K not in (2, 3, 4) or isinstance(K, bool):
        raise SpecError(f"qtip: option K = {K!r} (bits per weight) is invalid; expected one of [2, 3, 4]")
    if code not in CODES:
        raise SpecError(f"qtip: option code = {code!r} is invalid; expected one of {list(CODES)}")
    if L != STATE_BITS or isinstance(L, bool):
        raise SpecError(f"qtip: option L = {L!r} is invalid; expected 16 (the state width of QTIP's codes and kernels)")
    V = (2 if code == "hyb" else 1) if V is None else V
    if code == "hyb":
        if V not in (1, 2) or isinstance(V, bool):
            raise SpecError(f"qtip: option V = {V!r} is invalid for code 'hyb'; expected one of [1, 2]")
        Q = 9 if Q is None else Q
        if not isinstance(Q, int) or isinstance(Q, bool) or not 1 <= Q <= STATE_BITS - 1:
            raise SpecError(f"qtip: option Q = {Q!r} (tlut bits) is invalid; expected an int in [1, 15]")
    else:
        if V != 1:
            raise SpecError(f"qtip: option V = {V!r} is invalid for code {code!r}; expected 1 (QTIP's {code} is scalar)")
        if Q not in (None, 0):
            raise SpecError(f"qtip: option Q = {Q!r} is invalid for code {code!r}; expected None or 0 (no tlut)")
        Q = 0
    step = K * V
    kernel = code == "hyb" and V == 2 and Q == 9
    tensors = [TensorField("trellis", "int16", ("N//16*(K//16)", "16*bits"), "codes")]
    dparams = [("L", STATE_BITS), ("bits_per_weight", K), ("V", V), ("step_bits", step), ("tail_biting", True),
               ("bit_order", "msb"), ("word_bits", 16), ("tile", (TILE, TILE)), ("tile_order", "row_major"),
               ("value_order", "mma_m16n8k16" if kernel else "row_major"), ("code", code)]
    if code == "hyb":
        tensors.append(TensorField("tlut", "float16", ("2**tlut_bits", "V"), "table"))
        dparams += [("tlut_bits", Q), ("tlut_tensor", "tlut"), ("hash", "s*(s+1)"), ("index_shift", STATE_BITS - Q - 1),
                    ("sign_bit", STATE_BITS - 1), ("sign_value", 0)]
    elif code == "1mad":
        dparams += [("mul", MAD_MUL), ("add", MAD_ADD), ("byte_sum_bias", MAD_BIAS), ("div", MAD_DIV)]
    else:
        dparams += [("mul", INST3_MUL), ("add", INST3_ADD), ("and_mask", INST3_MASK), ("xor_mask", INST3_XOR),
                    ("halves", "fp16 sum")]
    tensors += [TensorField("SU", "float16", ("K",), "transform"), TensorField("SV", "float32", ("N",), "transform")]
    mult = 2 * TILE if kernel else TILE
    return FormatSpec(
        name="qtip", family="qtip",
        packing=Packing("qtip_kernel" if kernel else "qtip_tile", "int16", step, order="msb", axis="K",
                        straddle=16 % step != 0, fields_per_word=0 if 16 % step else 16 // step),
        decode=Decode("bitshift_trellis", bits=K, signed=True, params=tuple(dparams)),
        tensors=tuple(tensors),
        # y = SV * H_N((H_K(SU * x)) @ What^T): H over the whole of K and N (size 0), both powers of two
        transforms=(Transform("signs", side="input", placement="online", tensor="SU"),
                    Transform("hadamard", side="input", placement="online", size=0),
                    Transform("hadamard", side="output", placement="online", size=0),
                    Transform("signs", side="output", placement="online", tensor="SV")),
        params=(("bits", K), ("V", V), ("L", STATE_BITS), ("code", code), ("tlut_bits", Q),
                ("layout", "qtip_kernel" if kernel else "qtip_tile"),
                ("dims", "N and K powers of two"),
                ("k_multiple_reason", f"{'2x2 blocks of ' if kernel else ''}16x16 trellis tiles"),
                ("n_multiple_reason", f"{'2x2 blocks of ' if kernel else ''}16x16 trellis tiles")),
        k_multiple=mult, n_multiple=mult,
        description=f"QTIP {code.upper()} K={K} V={V}" + (f" Q={Q}" if code == "hyb" else ""))


# -- layout helpers ---------------------------------------------------------------------------------------

def mma_sequence_order() -> torch.Tensor:
    """perm[j] = row*16 + col of the tile element at trellis sequence position j (kernel layout):
    j = 32a + 8b + 4c + 2d + e sits at row 8d + a, column 8c + 2b + e (m16n8k16 A-fragment order)."""
    j = torch.arange(TILE * TILE)
    a, b, c, d, e = j >> 5, (j >> 3) & 3, (j >> 2) & 1, (j >> 1) & 1, j & 1
    return (8 * d + a) * TILE + 8 * c + 2 * b + e


def kernel_words_from_plain(words: torch.Tensor, N: int, K: int, bits: int) -> torch.Tensor:
    """Plain tile words (T, 16*bits) -> the kernel layout (same shape), values in [0, 2**16).

    Each tile's words as big-endian bytes are cut into 32 chunks of `bits` bytes; for every 2x2
    block of tiles (tile rows 2A+q, tile columns 2B+p) chunk c of the four tiles is emitted in
    (p, q) order, each chunk's bytes reversed; the byte stream is then read as little-endian words."""
    w = words.to(torch.int64) & 0xFFFF
    be = torch.stack([w >> 8, w & 0xFF], -1).reshape(N // 32, 2, K // 32, 2, 32, bits)  # (A, q, B, p, c, r)
    kb = be.flip(-1).permute(0, 2, 4, 3, 1, 5).reshape(-1, 2)  # (A, B, c, p, q, r)
    return (kb[:, 0] | (kb[:, 1] << 8)).reshape(words.shape)


def plain_words_from_kernel(words: torch.Tensor, N: int, K: int, bits: int) -> torch.Tensor:
    """Inverse of `kernel_words_from_plain`."""
    w = words.to(torch.int64) & 0xFFFF
    kb = torch.stack([w & 0xFF, w >> 8], -1).reshape(N // 32, K // 32, 32, 2, 2, bits)  # (A, B, c, p, q, r)
    be = kb.flip(-1).permute(0, 4, 1, 3, 2, 5).reshape(*words.shape, 2)  # (A, q, B, p, c, r)
    return (be[..., 0] << 8) | be[..., 1]


def tiles_to_matrix(tiles: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """(T, 256) row-major tiles (tile t = (t // (K/16), t % (K/16))) -> (N, K)."""
    return tiles.reshape(N // TILE, K // TILE, TILE, TILE).permute(0, 2, 1, 3).reshape(N, K)


def matrix_to_tiles(M: torch.Tensor) -> torch.Tensor:
    N, K = M.shape
    return M.reshape(N // TILE, TILE, K // TILE, TILE).permute(0, 2, 1, 3).reshape(-1, TILE * TILE)


def hadamard_rows(x: torch.Tensor) -> torch.Tensor:
    """x @ H_n for the normalized Sylvester Hadamard H_n (n = x.shape[-1], a power of two), by the
    O(n log n) butterfly, in float64."""
    n = x.shape[-1]
    y = x.to(torch.float64).reshape(-1, n)
    h = 1
    while h < n:
        y = y.reshape(-1, n // (2 * h), 2, h)
        y = torch.stack([y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]], dim=2)
        h *= 2
    return (y.reshape(x.shape) / math.sqrt(n))


def state_values(spec: FormatSpec, states: torch.Tensor, tlut: torch.Tensor | None = None) -> torch.Tensor:
    """States (...) -> decoded values (..., V) float32 with the spec's code function."""
    code = spec.param("code")
    if code == "1mad":
        return code_1mad(states)
    if code == "3inst":
        return code_3inst(states)
    return code_hyb(states, tlut, spec.param("tlut_bits"), STATE_BITS)


def decode_tiles(spec: FormatSpec, trellis: torch.Tensor, N: int, K: int, tlut: torch.Tensor | None = None) -> torch.Tensor:
    """The trellis part of the decode: What (N, K) float32, bit-exact with QTIP's get_hatW / decode_compressed."""
    bits, V = spec.param("bits"), spec.param("V")
    kernel = spec.packing.layout == "qtip_kernel"
    words = plain_words_from_kernel(trellis, N, K, bits) if kernel else trellis
    states = trellis_states(words, STATE_BITS, bits * V, TILE * TILE // V)
    seq = state_values(spec, states, tlut).reshape(states.shape[0], TILE * TILE)
    if kernel:
        tiles = torch.empty_like(seq)
        tiles[:, mma_sequence_order()] = seq
        seq = tiles
    return tiles_to_matrix(seq, N, K)


def fixed_tlut(Q: int, V: int) -> torch.Tensor:
    """The encoder's HYB table (float16 [2**Q, V]): V=2 points at Rayleigh-quantile radii
    sqrt(-2 ln(1 - (i+1/2)/2**Q)) and angles i * pi * (3 - sqrt 5); V=1 half-normal quantiles."""
    n = 1 << Q
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    if V == 1:
        return (math.sqrt(2.0) * torch.erfinv(u)).unsqueeze(1).to(torch.float16)
    r = torch.sqrt(-2.0 * torch.log1p(-u))
    theta = torch.arange(n, dtype=torch.float64) * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1).to(torch.float16)


def _check_dims(spec: FormatSpec, N: int, K: int) -> None:
    for dim, v in (("N", N), ("K", K)):
        if v & (v - 1):
            raise SpecError(f"qtip: {dim} = {v} is not a power of two; QTIP's Hadamards of size 2^k * "
                            f"{{12, 20, 28, ...}} (get_hadK) are not supported, only powers of two")


class QtipCodec:
    """Reference codec for QTIP: Viterbi encoder and bit-exact trellis decoder."""

    def quantize(self, spec: FormatSpec, W: torch.Tensor, seed: int = 0, device: str = "cpu",
                 **calib) -> dict[str, torch.Tensor]:
        """seed: the random signs SU/SV; device: where the Viterbi search runs (results are identical up to
        float rounding ties in the path search)."""
        if calib:
            raise SpecError(f"qtip: unknown calibration arguments {sorted(calib)}; the encoder takes `seed`, `device`")
        N, K = W.shape
        _check_dims(spec, N, K)
        bits, V, Q = spec.param("bits"), spec.param("V"), spec.param("tlut_bits")
        g = torch.Generator().manual_seed(seed)
        su = torch.where(torch.randn(K, generator=g) >= 0, 1.0, -1.0).to(torch.float64)
        sv = torch.where(torch.randn(N, generator=g) >= 0, 1.0, -1.0).to(torch.float64)
        Wr = hadamard_rows(hadamard_rows(W.to(torch.float64) * su * sv.unsqueeze(1)).t()).t()  # H_N diag(sv) W diag(su) H_K
        tlut = fixed_tlut(Q, V) if spec.param("code") == "hyb" else None
        lut = state_values(spec, torch.arange(1 << STATE_BITS), tlut)
        rms = Wr.square().mean().sqrt().item()
        scale = rms / (lut.double().square().mean().sqrt().item() * SCALE_OVERRIDE) if rms > 0 else 1.0
        seq = matrix_to_tiles((Wr / scale).to(torch.float32))
        kernel = spec.packing.layout == "qtip_kernel"
        if kernel:
            seq = seq[:, mma_sequence_order()]
        states = viterbi_tailbiting(seq.to(device), lut, STATE_BITS, bits * V).cpu()
        words = pack_trellis(states, STATE_BITS, bits * V)
        if kernel:
            words = kernel_words_from_plain(words, N, K, bits)
        out = {"trellis": torch.where(words >= 1 << 15, words - (1 << 16), words).to(torch.int16)}
        if tlut is not None:
            out["tlut"] = tlut
        out["SU"] = su.to(torch.float16)
        out["SV"] = (sv * scale).to(torch.float32)
        return out

    def synthetic(self, spec: FormatSpec, N: int, K: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Valid random tensors without the Viterbi search: any words are one tail-biting path; the
        encoder's fixed HYB table; random signs SU; SV random signs times 0.02 (a typical scale)."""
        _check_dims(spec, N, K)
        shape, _ = spec.tensor_schema(N, K)["trellis"]
        out = {"trellis": torch.randint(-2 ** 15, 2 ** 15, shape, generator=gen, dtype=torch.int16)}
        if spec.param("code") == "hyb":
            out["tlut"] = fixed_tlut(spec.param("tlut_bits"), spec.param("V"))
        out["SU"] = torch.where(torch.rand(K, generator=gen) < 0.5, -1.0, 1.0).to(torch.float16)
        out["SV"] = torch.where(torch.rand(N, generator=gen) < 0.5, -0.02, 0.02)
        return out

    def dequantize(self, spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
        _check_dims(spec, N, K)
        What = decode_tiles(spec, tensors["trellis"], N, K, tensors.get("tlut")).to(torch.float64)
        rot = hadamard_rows(hadamard_rows(What).t()).t()  # H_N What H_K (both symmetric)
        W = tensors["SV"].to(torch.float64).unsqueeze(1) * rot * tensors["SU"].to(torch.float64).unsqueeze(0)
        return W.to(torch.float32)


register_codec("qtip", QtipCodec())
register_format("qtip", build_qtip)
