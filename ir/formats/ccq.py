"""CCQ (Baidu, arXiv 2507.07145): convolutional-code quantization, FastDeploy WINT2 / WINT2.5.

A convolutional code (L, N, S) stores N values as the N windows of width L, stride S, of one
C = L + (N-1)*S bit code word: value j (j = 0 first along K) is bits [(N-1-j)*S, (N-1-j)*S + L)
plus a bias. With clustering, an 8-bit cluster index z is stored instead and mapped to the code
word per output channel by `c = int32(floor(fma(z, code_scale, code_zp) + 0.5))` ("affine") or by
a 2**8-entry per-tensor code table ("table"). Every 64 K rows share a 4-bit local scale (two per
byte, even group in the high nibble) times a per-channel super scale:

    w[n, k] = T(float32(ls[k // G, n]) * float32(super_scale[n]) * float32(v[n, k]))

with T the super scale's dtype (the kernel's output type), as FastDeploy's wint2x_unzip.h
computes it. `ccq_wint2` is exactly `ccq(L=6, N=4, S=3, clustered=True, code_map="affine",
group_size=64)`: C = 6 + 3*3 = 15 bits, shifts (9, 6, 3, 0), bias -32, FastDeploy's
`weight` uint8 [K/4, N] / `local_scale` uint8 [K/128, N] / `code_scale`, `code_zp` f32 [N] /
`super_scale` [N] (dense layer: FastDeploy's MoE tensors carry a leading expert dim).

`ccq_wint2_5` is FastDeploy's kWeightOnlyInt25: per 64 K rows, ten 16-bit words. Words 0..8
each hold 7 values: an (L=3, N=3, S=2) code in bits 9..15 (shifts 13, 11, 9) and an
(L=3, N=4, S=2) code in bits 0..8 (shifts 6, 4, 2, 0), value = field - 4, K row 7*word + j.
Word 9 holds value 63 in bits 13..15 and the 13-bit local scale in bits 0..12.

Encoders (round-to-nearest in the code space, no calibration data): alternate between the
nearest code word of each N-tuple given the group scale and the MSE-optimal group scale given
the code words, s = sum_t <w_t, v_t> / sum_t ||v_t||^2 (the minimizer of sum_t ||w_t - s v_t||^2);
then quantize the scales (super = max group scale / (2**bits - 1) in the scale dtype, local =
round(s / super), and for 4-bit locals the best of round-1, round, round+1 by squared error) and
re-assign the code words. Affine maps are chosen per channel from a fixed pseudo-random set of
non-wrapping maps (a in [112, 128.5), 9 fractional bits, 255a + b + 0.5 < 2**C): codes then stay
exact in float32 with or without fma and inside int16, so FastDeploy's CUDA and Triton kernels
decode them identically (checked on an H200: nvcc, NVRTC and Triton all compute the map with one
fma; Triton saturates codes >= 2**15 to 32767, the CUDA kernel keeps int32; the reference decoder
follows the CUDA kernel). The paper's own clustering (Gaussian-mixture clusters of code words) and
its scale formulas were not available; these encoders are ours.
"""
from __future__ import annotations

import math

import torch

from ..registry import register_codec, register_format
from ..spec import Decode, FormatSpec, Packing, ScaleLevel, SpecError, TensorField
from ..trellis import affine_round_code, viterbi, window_fields

SCALE_DTYPES = ("float16", "bfloat16")
CODE_MAPS = ("affine", "table", "identity")
LOCAL_BITS = 4          # cluster layouts: two 4-bit local scales per byte
CLUSTER_BITS = 8        # one uint8 cluster index per code word
MAX_CODE_BITS = 24      # codes (and the affine map) must be exact in float32
W25_SHIFTS = (13, 11, 9, 6, 4, 2, 0)
W25_CHAINS = ((13, 11, 9), (6, 4, 2, 0))
W25_GROUP, W25_WORDS, W25_LOCAL_BITS = 64, 10, 13
_AFFINE_CANDIDATES, _AFFINE_TOP, _FIT_ITERS = 48, 4, 4


def _int_opt(name, value, lo, hi, what=""):
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise SpecError(f"ccq: option {name} = {value!r} is invalid; expected an int in [{lo}, {hi}]{what}")


def _choice_opt(name, value, choices):
    if value not in choices:
        raise SpecError(f"ccq: option {name} = {value!r} is invalid; expected one of {list(choices)}")


def seq_shifts(L: int, N: int, S: int) -> tuple[int, ...]:
    """Right shifts of the N windows of an (L, N, S) code word; value j (first along K) is highest."""
    return tuple((N - 1 - j) * S for j in range(N))


def _container(code_bits: int) -> str:
    return "uint8" if code_bits <= 8 else "int16" if code_bits <= 16 else "int32"


def _cluster_spec(name, L, N, S, clustered, code_map, group_size, bias, scale_dtype, description):
    C = L + (N - 1) * S
    wdtype = "uint8" if clustered else _container(C)
    shifts = seq_shifts(L, N, S)
    tensors = [TensorField("weight", wdtype, ("K//seq_len", "N"), "codes"),
               TensorField("local_scale", "uint8", ("K//(2*group_size)", "N"), "scales")]
    if code_map == "affine":
        tensors += [TensorField("code_scale", "float32", ("N",), "table"),
                    TensorField("code_zp", "float32", ("N",), "table")]
    elif code_map == "table":
        tensors.append(TensorField("code_table", "int32", ("2**cluster_bits",), "table"))
    tensors.append(TensorField("super_scale", scale_dtype, ("N",), "scales"))
    dparams = [("code_bits", C), ("window_bits", L), ("stride_bits", S), ("values_per_code", N),
               ("shifts", shifts), ("bias", bias), ("code_int", "int32"),
               ("code_map", {"affine": "affine_round", "table": "table", "identity": "identity"}[code_map]),
               ("cluster_bits", CLUSTER_BITS if clustered else 0)]
    if code_map == "affine":
        dparams += [("code_map_formula", "int32(floor(fma(z, code_scale[n], code_zp[n]) + 0.5))"),
                    ("code_map_tensors", ("code_scale", "code_zp"))]
    elif code_map == "table":
        dparams.append(("code_map_tensors", ("code_table",)))
    super_level = ScaleLevel("super_scale", "row", scale_dtype, op="mul")
    local = ScaleLevel("local_scale", "group", "uint8", op="mul", axis="K", size=group_size, bits=LOCAL_BITS,
                       quantized_by=super_level)
    return FormatSpec(
        name=name, family="ccq",
        packing=Packing("ccq_cluster", wdtype, CLUSTER_BITS if clustered else C, order="lsb", axis="K",
                        fields_per_word=1),
        decode=Decode("overlapping_fields", bits=L, signed=True, params=tuple(dparams)),
        tensors=tuple(tensors), scales=(local,),
        params=(("L", L), ("seq_len", N), ("S", S), ("code_bits", C), ("clustered", clustered),
                ("code_map", code_map), ("group_size", group_size), ("bias", bias), ("cluster_bits", CLUSTER_BITS),
                ("scale_dtype", scale_dtype), ("local_scale_packing", "two 4-bit scales per byte, even group high nibble"),
                ("compute", "float32 scale and product, cast to scale_dtype"),
                ("k_multiple_reason", f"two {LOCAL_BITS}-bit group-{group_size} local scales per byte")),
        k_multiple=2 * group_size, description=description)


def build_ccq_wint2(scale_dtype: str = "float16") -> FormatSpec:
    """CCQ / FastDeploy WINT2: uint8 cluster index -> affine 15-bit code -> four 6-bit windows; 4-bit g64 x per-channel scale."""
    _choice_opt("scale_dtype", scale_dtype, SCALE_DTYPES)
    return _cluster_spec("ccq_wint2", 6, 4, 3, True, "affine", 64, -32, scale_dtype,
                         "FastDeploy weight_only_int2 (dense layout of one expert/linear)")


def build_ccq(L: int = 6, N: int = 4, S: int = 3, clustered: bool = True, code_map: str | None = None,
              group_size: int = 64, bias: int | None = None, scale_dtype: str = "float16") -> FormatSpec:
    """CCQ convolutional code (L, N, S): N values are the L-bit windows at stride S of a code word, optionally clustered."""
    _int_opt("L", L, 1, 16)
    _int_opt("N", N, 2, 16)
    _int_opt("S", S, 1, L, " (S <= L: windows must overlap or touch)")
    C = L + (N - 1) * S
    if C > MAX_CODE_BITS:
        raise SpecError(f"ccq: code word L + (N-1)*S = {L} + {N - 1}*{S} = {C} bits is invalid; expected at most "
                        f"{MAX_CODE_BITS} bits (codes must be exact in float32)")
    if not isinstance(clustered, bool):
        raise SpecError(f"ccq: option clustered = {clustered!r} is invalid; expected True or False")
    code_map = code_map if code_map is not None else ("affine" if clustered else "identity")
    _choice_opt("code_map", code_map, CODE_MAPS[:2] if clustered else CODE_MAPS[2:])
    if clustered and C <= CLUSTER_BITS:
        raise SpecError(f"ccq: clustered = True with a {C}-bit code word is invalid; clustering needs more than "
                        f"{CLUSTER_BITS} code bits (use clustered=False)")
    _int_opt("group_size", group_size, N, 1 << 16)
    if group_size % N:
        raise SpecError(f"ccq: option group_size = {group_size} is invalid; expected a multiple of N = {N}")
    bias = -(1 << (L - 1)) if bias is None else bias
    _int_opt("bias", bias, -(1 << L), 1 << L)
    _choice_opt("scale_dtype", scale_dtype, SCALE_DTYPES)
    return _cluster_spec("ccq", L, N, S, clustered, code_map, group_size, bias, scale_dtype,
                         f"CCQ ({L},{N},{S}) code, {'clustered ' + code_map if clustered else 'unclustered'}")


def build_ccq_wint2_5(scale_dtype: str = "float16") -> FormatSpec:
    """CCQ / FastDeploy WINT2.5: 64 values in ten 16-bit words, (3,3,2)+(3,4,2) codes, 13-bit in-band scale."""
    _choice_opt("scale_dtype", scale_dtype, SCALE_DTYPES)
    super_level = ScaleLevel("super_scale", "row", scale_dtype, op="mul")
    local = ScaleLevel("local_scale", "group", "int16", op="mul", axis="K", size=W25_GROUP, bits=W25_LOCAL_BITS,
                       quantized_by=super_level)
    return FormatSpec(
        name="ccq_wint2_5", family="ccq",
        packing=Packing("ccq_wint2_5", "int16", 3, order="msb", axis="K", fields_per_word=7),
        decode=Decode("overlapping_fields", bits=3, signed=True, params=(
            ("window_bits", 3), ("bias", -4), ("word_bits", 16), ("shifts", W25_SHIFTS), ("chains", W25_CHAINS),
            ("chain_codes", ((3, 3, 2), (3, 4, 2))), ("code_map", "identity"), ("group_words", W25_WORDS),
            ("values_per_group", W25_GROUP), ("tail_value", ("word", 9, "shift", 13)),
            ("local_scale_field", ("word", 9, "shift", 0, "bits", W25_LOCAL_BITS)))),
        tensors=(TensorField("weight", "int16", ("K//64*10", "N"), "codes"),
                 TensorField("super_scale", scale_dtype, ("N",), "scales")),
        scales=(local,),
        params=(("scale_dtype", scale_dtype), ("word_storage", "uint16 bit patterns in int16"),
                ("compute", "float32 scale and product, cast to scale_dtype"),
                ("k_multiple_reason", "ten 16-bit words per group of 64 K rows")),
        k_multiple=W25_GROUP, description="FastDeploy weight_only_int2.5 (dense layout of one expert/linear)")


# -- decode helpers (pure torch twins of the kernels' decode) ---------------------------------------------

def unpack_local_scales(local_scale: torch.Tensor) -> torch.Tensor:
    """uint8 [G/2, N] -> [G, N] int64 4-bit scales; group 2i is the high nibble, 2i+1 the low nibble."""
    b = local_scale.to(torch.int64)
    return torch.stack([(b >> 4) & 0xF, b & 0xF], dim=1).reshape(-1, b.shape[1])


def pack_local_scales(ls: torch.Tensor) -> torch.Tensor:
    """[G, N] ints in [0, 15] -> uint8 [G/2, N] (inverse of unpack_local_scales)."""
    return ((ls[0::2] << 4) | ls[1::2]).to(torch.uint8)


def sequence_values(codes: torch.Tensor, L: int, N: int, S: int, bias: int) -> torch.Tensor:
    """Code words (...) -> (..., N) int64 values: window j = (code >> (N-1-j)*S) & (2**L-1), plus bias."""
    return window_fields(codes, seq_shifts(L, N, S), L) + bias


def wint2_5_fields(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """WINT2.5 words [K/64*10, N] -> (values [K, N] int64 in [-4, 3], local scales [K/64, N] int64)."""
    u = (weight.to(torch.int64) & 0xFFFF).reshape(-1, W25_WORDS, weight.shape[1])  # (groups, 10, N)
    body = window_fields(u[:, :9].transpose(1, 2), W25_SHIFTS, 3)  # (groups, N, 9, 7)
    body = body.reshape(u.shape[0], u.shape[2], 63)
    tail = ((u[:, 9] >> 13) & 7).unsqueeze(-1)
    vals = torch.cat([body, tail], -1) - 4  # (groups, N, 64)
    return vals.transpose(1, 2).reshape(-1, weight.shape[1]), u[:, 9] & 0x1FFF


def _scaled(vals_kn: torch.Tensor, local_kn: torch.Tensor, super_scale: torch.Tensor) -> torch.Tensor:
    """w = T(float32(local) * float32(super) * float32(v)) with T = super_scale.dtype; returns float32 (N, K)."""
    scale = local_kn.to(torch.float32) * super_scale.to(torch.float32).unsqueeze(0)
    return (scale * vals_kn.to(torch.float32)).to(super_scale.dtype).to(torch.float32).t().contiguous()


def _codes(spec: FormatSpec, tensors: dict) -> torch.Tensor:
    z = tensors["weight"]
    cmap = spec.param("code_map")
    if cmap == "affine":
        return affine_round_code(z.to(torch.float32), tensors["code_scale"].unsqueeze(0), tensors["code_zp"].unsqueeze(0))
    if cmap == "table":
        return tensors["code_table"].to(torch.int64)[z.to(torch.int64)]
    return z.to(torch.int64) & ((1 << (8 * z.element_size())) - 1)


def _geometry(spec):
    return spec.param("L"), spec.param("seq_len"), spec.param("S"), spec.param("bias"), spec.param("group_size")


# -- encoder --------------------------------------------------------------------------------------------

def _nearest(x: torch.Tensor, cb: torch.Tensor, max_bytes: int = 1 << 28) -> torch.Tensor:
    """x (n, m, d), cb (n or 1, C, d) -> index (n, m) of each tuple's nearest code word."""
    n, m, _ = x.shape
    step = max(1, max_bytes // max(1, 4 * m * cb.shape[1]))
    out = []
    for i in range(0, n, step):
        xi = x[i:i + step]
        if cb.shape[0] == 1:  # ||c||^2 - 2 <x, c>: the squared distance up to ||x||^2
            d = torch.addmm((cb[0] * cb[0]).sum(-1), xi.reshape(-1, xi.shape[-1]), cb[0].t(), alpha=-2.0)
            out.append(d.argmin(-1).reshape(xi.shape[:2]))
        else:
            c = cb[i:i + step]
            d = torch.baddbmm((c * c).sum(-1).unsqueeze(1), xi, c.transpose(1, 2), alpha=-2.0)
            out.append(d.argmin(-1))
    return torch.cat(out, 0)


class _Book:
    """Code words a tuple may take: a finite table of values (n or 1, C, d) or the full trellis."""

    def __init__(self, values=None, trellis=None):
        self.values, self.trellis = values, trellis

    def assign(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (n, m, d) -> (index or code word (n, m), decoded values (n, m, d) float32)."""
        if self.values is not None:
            idx = _nearest(x, self.values)
            vals = self.values.expand(x.shape[0], -1, -1)
            return idx, torch.gather(vals, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        L, N, S, bias = self.trellis
        code = best_code_words(x.reshape(-1, N), L, N, S, bias).reshape(x.shape[:2])
        return code, sequence_values(code, L, N, S, bias).to(torch.float32)


def best_code_words(x: torch.Tensor, L: int, N: int, S: int, bias: int) -> torch.Tensor:
    """Nearest (L, N, S) code word to each row of x (M, N) by Viterbi over the 2**L window states."""
    lut = (torch.arange(1 << L, dtype=torch.float32) + bias).unsqueeze(1)
    states = viterbi(x.to(torch.float32), lut, L, S)
    code = states[:, 0] << ((N - 1) * S)
    for t in range(1, N):
        code = code | ((states[:, t] & ((1 << S) - 1)) << ((N - 1 - t) * S))
    return code


def _fit(Wg: torch.Tensor, book: _Book, s: torch.Tensor, iters: int):
    """Alternate code assignment and MSE-optimal group scales. Wg (n, g, t, d); s (n, g) initial scales.
    Returns (scales (n, g), squared error per channel (n,))."""
    n, g, t, d = Wg.shape
    for _ in range(iters):
        safe = torch.where(s > 0, s, torch.ones_like(s))
        _, v = book.assign((Wg / safe[..., None, None]).reshape(n, g * t, d))
        v = v.reshape(n, g, t, d)
        num, den = (Wg * v).sum((2, 3)), (v * v).sum((2, 3))
        s = torch.where((num > 0) & (den > 0), num / den.clamp_min(1e-30), s)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    _, v = book.assign((Wg / safe[..., None, None]).reshape(n, g * t, d))
    err = ((Wg - s[..., None, None] * v.reshape(n, g, t, d)) ** 2).sum((1, 2, 3))
    return s, err


def _quantize_scales(s: torch.Tensor, local_max: int, dtype: torch.dtype):
    """Group scales (n, g) -> (super (n,) in dtype, local (n, g) int64 in [0, local_max])."""
    top = s.amax(1)
    sup = (top / local_max).to(dtype)
    tiny = torch.tensor(torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps, dtype=dtype)
    sup = torch.where((sup == 0) & (top > 0), tiny, sup)
    supf = sup.to(torch.float32).clamp_min(1e-30)
    loc = torch.round(s / supf.unsqueeze(1)).clamp(1, local_max).to(torch.int64)
    return sup, torch.where(s > 0, loc, torch.zeros_like(loc))


def _assign_final(Wg, book, sup, loc, local_max, search):
    """Codes for the stored (quantized) scales, trying local-1/local/local+1 when `search`."""
    n, g, t, d = Wg.shape
    supf = sup.to(torch.float32).unsqueeze(1)
    best = None
    for delta in ((-1, 0, 1) if search else (0,)):
        lc = torch.where(loc > 0, (loc + delta).clamp(1, local_max), loc)
        sc = lc.to(torch.float32) * supf
        safe = torch.where(sc > 0, sc, torch.ones_like(sc))
        idx, v = book.assign((Wg / safe[..., None, None]).reshape(n, g * t, d))
        err = ((Wg - sc[..., None, None] * v.reshape(n, g, t, d)) ** 2).sum((2, 3))
        if best is None:
            best = (err, lc, idx.reshape(n, g, -1))
        else:
            better = err < best[0]
            best = (torch.where(better, err, best[0]), torch.where(better, lc, best[1]),
                    torch.where(better.unsqueeze(-1), idx.reshape(n, g, -1), best[2]))
    return best[1], best[2]


def affine_candidates(code_bits: int, count: int = _AFFINE_CANDIDATES) -> torch.Tensor:
    """(count, 2) float32 (code_scale, code_zp) maps spreading 256 clusters over [0, 2**code_bits) without wrapping.

    a in [0.875, 1.0039) * 2**code_bits / 256 and b in [0, 2**C - 255a - 0.5), both multiples of 2**-f
    with f = min(9, 24 - C) so every z*a + b + 0.5 is exact in float32. Fixed seed: the same set every run."""
    frac = 1 << min(9, MAX_CODE_BITS - code_bits)
    g = torch.Generator().manual_seed(0x43435131)
    unit = (1 << code_bits) / 256.0
    a = torch.round((0.875 + 0.12890625 * torch.rand(count, generator=g, dtype=torch.float64)) * unit * frac) / frac
    a = a.clamp(max=math.floor(((1 << code_bits) - 1.0) / 255.0 * frac) / frac)
    room = (1 << code_bits) - 255.0 * a - 0.5
    b = torch.floor(torch.rand(count, generator=g, dtype=torch.float64) * room * frac) / frac
    return torch.stack([a, b], 1).to(torch.float32)


def _affine_book(maps: torch.Tensor, L, N, S, bias) -> torch.Tensor:
    """maps (m, 2) -> code word values (m, 256, N) float32."""
    z = torch.arange(256, dtype=torch.float32).unsqueeze(0)
    codes = affine_round_code(z, maps[:, :1], maps[:, 1:])
    return sequence_values(codes, L, N, S, bias).to(torch.float32)


def _rank_affine(Wg, s0, books) -> torch.Tensor:
    """Candidate code books (m, 256, N) ranked by squared error on up to 16 evenly spaced channels."""
    sub = torch.linspace(0, Wg.shape[0] - 1, min(Wg.shape[0], 16)).round().long()
    m, ns = books.shape[0], len(sub)
    err = _fit(Wg[sub].repeat(m, 1, 1, 1), _Book(books.repeat_interleave(ns, 0)), s0[sub].repeat(m, 1), 2)[1]
    return torch.argsort(err.view(m, ns).sum(1), stable=True)


def _code_table(Wg, s, L, N, S, bias, rounds: int = 3):
    """A 256-entry code table: start from the best shared affine map's 256 code words, then Lloyd rounds in code space (each entry moves to the code word nearest its tuples' mean, which minimizes
    their summed squared error) alternating with group-scale fits. Returns (sorted table, scales)."""
    maps = affine_candidates(L + (N - 1) * S)
    best = _rank_affine(Wg, s, _affine_book(maps, L, N, S, bias))[0]
    table = affine_round_code(torch.arange(256, dtype=torch.float32), maps[best, 0], maps[best, 1])
    for _ in range(rounds):
        book = _Book(sequence_values(table, L, N, S, bias).to(torch.float32).unsqueeze(0))
        s = _fit(Wg, book, s, 2)[0]
        x = (Wg / torch.where(s > 0, s, torch.ones_like(s))[..., None, None]).reshape(1, -1, N)
        idx = _nearest(x, book.values)[0]
        sums = torch.zeros(len(table), N).index_add_(0, idx, x[0])
        cnt = torch.bincount(idx, minlength=len(table))
        moved = best_code_words(sums / cnt.clamp_min(1).unsqueeze(1), L, N, S, bias)
        table = torch.where(cnt > 0, moved, table)
    table = torch.sort(table).values
    book = _Book(sequence_values(table, L, N, S, bias).to(torch.float32).unsqueeze(0))
    return table, _fit(Wg, book, s, _FIT_ITERS)[0]


def _encode_cluster(spec: FormatSpec, W: torch.Tensor) -> dict[str, torch.Tensor]:
    L, N, S, bias, G = _geometry(spec)
    n, K = W.shape
    dtype = getattr(torch, spec.param("scale_dtype"))
    Wg = W.reshape(n, K // G, G // N, N)
    s0 = Wg.abs().amax((2, 3)) / (1 << (L - 1))
    cmap, out = spec.param("code_map"), {}
    if cmap == "affine":
        maps = affine_candidates(spec.param("code_bits"))
        books = _affine_book(maps, L, N, S, bias)
        top = _rank_affine(Wg, s0, books)[:_AFFINE_TOP]
        fits = [_fit(Wg, _Book(books[i:i + 1]), s0, _FIT_ITERS) for i in top.tolist()]
        pick = torch.stack([f[1] for f in fits]).argmin(0)  # (n,)
        s = torch.stack([f[0] for f in fits])[pick, torch.arange(n)]
        chosen = maps[top[pick]]
        book = _Book(_affine_book(chosen, L, N, S, bias))
        out["code_scale"], out["code_zp"] = chosen[:, 0].contiguous(), chosen[:, 1].contiguous()
    elif cmap == "table":
        table, s = _code_table(Wg, s0, L, N, S, bias)
        book = _Book(sequence_values(table, L, N, S, bias).to(torch.float32).unsqueeze(0))
        out["code_table"] = table.to(torch.int32)
    else:
        book = _Book(trellis=(L, N, S, bias))
        s = _fit(Wg, book, s0, _FIT_ITERS)[0]
    sup, loc = _quantize_scales(s, (1 << LOCAL_BITS) - 1, dtype)
    loc, idx = _assign_final(Wg, book, sup, loc, (1 << LOCAL_BITS) - 1, search=True)
    out["weight"] = _store_codes(spec, idx)
    out["local_scale"] = pack_local_scales(loc.t().contiguous())
    out["super_scale"] = sup
    return out


def _store_codes(spec: FormatSpec, idx: torch.Tensor) -> torch.Tensor:
    """Code indexes (n, groups, tuples) -> the stored weight [K/N, n] (int16 keeps the bit pattern)."""
    codes = idx.reshape(idx.shape[0], -1).t()
    wdtype = spec.tensor("weight").dtype
    if wdtype == "int16":
        codes = torch.where(codes >= 1 << 15, codes - (1 << 16), codes)
    return codes.to(getattr(torch, wdtype)).contiguous()


def _store_w25(loc: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Local scales (n, groups) and code words (n, groups*10) -> WINT2.5 weight [K/64*10, n] int16."""
    words = words.reshape(loc.shape[0], loc.shape[1], W25_WORDS).clone()
    words[..., 9] |= loc
    words = words.reshape(loc.shape[0], -1).t()
    return torch.where(words >= 1 << 15, words - (1 << 16), words).to(torch.int16).contiguous()


def reassign_codes(spec: FormatSpec, W: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The stored `weight` tensor for W (N, K) keeping the scales and code maps in `tensors`: every
    N-tuple (WINT2.5: every chain) gets its nearest code word under the stored scales."""
    n, K = W.shape
    W = W.to(torch.float32)
    if spec.packing.layout == "ccq_wint2_5":
        _, loc = wint2_5_fields(tensors["weight"])
        loc = loc.t().contiguous()
        _, words = _assign_final(W.reshape(n, K // W25_GROUP, W25_GROUP, 1), _W25Book(), tensors["super_scale"], loc,
                                 (1 << W25_LOCAL_BITS) - 1, search=False)
        return _store_w25(loc, words)
    L, N, S, bias, G = _geometry(spec)
    cmap = spec.param("code_map")
    if cmap == "affine":
        book = _Book(_affine_book(torch.stack([tensors["code_scale"], tensors["code_zp"]], 1), L, N, S, bias))
    elif cmap == "table":
        book = _Book(sequence_values(tensors["code_table"], L, N, S, bias).to(torch.float32).unsqueeze(0))
    else:
        book = _Book(trellis=(L, N, S, bias))
    loc = unpack_local_scales(tensors["local_scale"]).t().contiguous()
    _, idx = _assign_final(W.reshape(n, K // G, G // N, N), book, tensors["super_scale"], loc,
                           (1 << LOCAL_BITS) - 1, search=False)
    return _store_codes(spec, idx)


def _w25_books() -> tuple[torch.Tensor, torch.Tensor]:
    a = window_fields(torch.arange(128), (4, 2, 0), 3) - 4
    b = window_fields(torch.arange(512), (6, 4, 2, 0), 3) - 4
    return a.to(torch.float32).unsqueeze(0), b.to(torch.float32).unsqueeze(0)


class _W25Book:
    """WINT2.5's code words for one 64-row group, flattened: 9 x (3-chain, 4-chain) + one free value."""

    def __init__(self):
        self.a, self.b = _w25_books()
        self.t = (torch.arange(8, dtype=torch.float32) - 4).view(1, 8, 1)

    def assign(self, x):  # x (n, g*64, 1) -> (codes (n, g*10) word values, values (n, g*64, 1))
        n = x.shape[0]
        grp = x.reshape(n, -1, 64)
        body = grp[..., :63].reshape(n, -1, 9, 7)
        ia = _nearest(body[..., :3].reshape(n, -1, 3), self.a)
        ib = _nearest(body[..., 3:].reshape(n, -1, 4), self.b)
        it = _nearest(grp[..., 63:], self.t)
        va, vb = self.a[0][ia].reshape(n, -1, 9, 3), self.b[0][ib].reshape(n, -1, 9, 4)
        vals = torch.cat([torch.cat([va, vb], -1).reshape(n, -1, 63), (it - 4).to(torch.float32).unsqueeze(-1)], -1)
        words = torch.cat([((ia << 9) | ib).reshape(n, -1, 9), (it << 13).unsqueeze(-1)], -1)
        return words.reshape(n, -1), vals.reshape(n, -1, 1)


def _encode_w25(spec: FormatSpec, W: torch.Tensor) -> dict[str, torch.Tensor]:
    n, K = W.shape
    dtype = getattr(torch, spec.param("scale_dtype"))
    Wg = W.reshape(n, K // W25_GROUP, W25_GROUP, 1)
    book = _W25Book()
    s, _ = _fit(Wg, book, Wg.abs().amax((2, 3)) / 4, _FIT_ITERS)
    local_max = (1 << W25_LOCAL_BITS) - 1
    sup, loc = _quantize_scales(s, local_max, dtype)
    loc, words = _assign_final(Wg, book, sup, loc, local_max, search=False)
    return {"weight": _store_w25(loc, words), "super_scale": sup}


AFFINE_CODE_LIMIT = 1 << 21   # |code word| bound under which every generated decode of the affine map is exact


def check_code_map(spec: FormatSpec, tensors: dict) -> None:
    """Raise SpecError unless the affine code map is finite and sends every cluster index to a code word in
    [-2**21, 2**21). The reference (FastDeploy's CUDA kernel) keeps the word as int32 and reads only its windows, so
    words past 2**C are legal; the generated kernels' fast decodes take the word's low bits from a float32 sum and
    are exact only inside that range, which no sane map leaves (a 15-bit code's map stays near [0, 2**15))."""
    if spec.packing.layout != "ccq_cluster" or not spec.param("clustered") or spec.param("code_map") != "affine":
        return
    cs, cz = tensors["code_scale"], tensors["code_zp"]
    if cs.is_meta or cz.is_meta:   # shapes only (e.g. a model built on the meta device): no values to check
        return
    finite = torch.isfinite(cs) & torch.isfinite(cz)
    if not bool(finite.all()):
        n = int((~finite).nonzero()[0, 0])
        raise SpecError(f"{spec.name}: code_scale / code_zp of column {n} are {float(cs[n])} / {float(cz[n])}; "
                        f"expected finite float32 values")
    ends = affine_round_code(torch.tensor([[0.0], [255.0]], device=cs.device), cs.unsqueeze(0), cz.unsqueeze(0))
    bad = ((ends < -AFFINE_CODE_LIMIT) | (ends >= AFFINE_CODE_LIMIT)).nonzero()   # monotone in z: the ends bound it
    if len(bad):
        z, n = int(bad[0, 0]) * 255, int(bad[0, 1])
        raise SpecError(f"{spec.name}: code_scale / code_zp of column {n} ({float(cs[n])}, {float(cz[n])}) map cluster "
                        f"index {z} to code word {int(ends[bad[0, 0], n])}; expected code words in [-2**21, 2**21) "
                        f"(a {spec.param('code_bits')}-bit code: a corrupt or mismatched checkpoint?)")


class CcqCodec:
    """Reference codec for the CCQ family (layouts ccq_cluster and ccq_wint2_5)."""

    def check_values(self, spec: FormatSpec, tensors: dict[str, torch.Tensor]) -> None:
        check_code_map(spec, tensors)

    def quantize(self, spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
        if calib:
            raise SpecError(f"{spec.name}: the CCQ encoder takes no calibration data; got {sorted(calib)}")
        if spec.packing.layout == "ccq_wint2_5":
            return _encode_w25(spec, W)
        return _encode_cluster(spec, W)

    def dequantize(self, spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
        if spec.packing.layout == "ccq_wint2_5":
            vals, loc = wint2_5_fields(tensors["weight"])
            return _scaled(vals, loc.repeat_interleave(W25_GROUP, 0), tensors["super_scale"])
        L, n_seq, S, bias, G = _geometry(spec)
        vals = sequence_values(_codes(spec, tensors), L, n_seq, S, bias)  # (K/n_seq, N, n_seq)
        vals = vals.permute(0, 2, 1).reshape(K, N)
        loc = unpack_local_scales(tensors["local_scale"]).repeat_interleave(G, 0)
        return _scaled(vals, loc, tensors["super_scale"])


register_codec("ccq", CcqCodec())
register_format("ccq_wint2", build_ccq_wint2)
register_format("ccq_wint2_5", build_ccq_wint2_5)
register_format("ccq", build_ccq)
