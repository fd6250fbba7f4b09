"""VPTQ (microsoft/VPTQ): vector quantization along out_features with residual and outlier codebooks.

Canonical layout (VQuantLinear, vptq/layers/vqlinear.py; decode = vptq/ops/quant_gemm.py `dequant`):
  centroids          fp16  [nc, num_centroids*vl]            one codebook per group of input columns
  indices            int32 [nc, ceil(N/vl), ceil(G*(ib+rb)/32)]  packed: merged (res << ib) | idx,
                                                              LSB-first bit stream, rows padded to 32 bits
                     int16 [nc, ceil(N/vl), G]               unpacked (a uint16 view)
  res_centroids      fp16  [nc, num_res_centroids*vl]        when num_res_centroids > 0
  res_indices        int16 [nc, ceil(N/vl), G]               unpacked layout only (packed merges them)
  outlier_centroids  fp16  [1, num_outlier_centroids*ovl]    when outlier_size > 0
  outlier_indices    int16 [1, ceil(N/ovl), outlier_size]     never packed
  perm               int16 [K] when packed (uint16 view), int64 [K] unpacked (VQuantLinear's dtypes)
  weight_scale/bias  fp16  [K]                               when norm
nc = (K - outlier_size) / G codebook groups of G input columns (G = group_size, -1 = all of them).

Decode: W'[o, g*G + c] = C_g[idx[g, o//vl, c]][o % vl] + R_g[ridx[g, o//vl, c]][o % vl] (padded rows
dropped), the outlier block concatenated first along the input dim, W = W'[:, argsort(perm)], then
W = W * weight_scale + weight_bias per input column; every step in fp16, as the origin does it.
"""
from __future__ import annotations

import functools
import math

import torch

from ..codebook import gather_decode, kmeans, nearest_codeword, pack_index_stream, unpack_index_stream
from ..registry import register_codec, register_format
from ..spec import Decode, FormatSpec, Packing, ScaleLevel, SpecError, TensorField, Transform

_G = "((K - outlier_size) if group_size < 0 else group_size)"
_NC = "(1 if group_size < 0 else (K - outlier_size) // group_size)"
_ROWS = "((N + vector_len - 1) // vector_len)"
_CALIB = ("hessian_diag", "kmeans_iters", "seed")


def _bad(option: str, value, valid: str) -> None:
    raise SpecError(f"vptq: {option} = {value!r} is invalid; expected {valid}")


def _check_entries(option: str, value: int, allow_zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (
        (allow_zero and value == 0) or (2 <= value <= 65536 and value & (value - 1) == 0))
    if not ok:
        _bad(option, value, ("0 (none) or " if allow_zero else "")
             + "a power of two in [2, 65536] (indices are uint16; packing uses log2 bits)")


def vptq_name(vector_len: int, num_centroids: int, num_res_centroids: int) -> str:
    """The README-style label, e.g. vptq_v8_k65536_256 (residual count omitted when 0)."""
    return f"vptq_v{vector_len}_k{num_centroids}" + (f"_{num_res_centroids}" if num_res_centroids else "")


def build_vptq(vector_len: int = 8, num_centroids: int = 65536, num_res_centroids: int = 256,
               group_size: int = -1, outlier_size: int = 0, outlier_vector_len: int = 8,
               num_outlier_centroids: int = 4096, packed: bool = True, perm: bool = True,
               norm: bool = True) -> FormatSpec:
    """VPTQ vector quantization along N: codebook + residual codebook, outlier columns, perm, column norm."""
    if not (isinstance(vector_len, int) and not isinstance(vector_len, bool) and 1 <= vector_len <= 32):
        _bad("vector_len", vector_len, "an int in [1, 32]")
    _check_entries("num_centroids", num_centroids)
    _check_entries("num_res_centroids", num_res_centroids, allow_zero=True)
    if not (isinstance(group_size, int) and not isinstance(group_size, bool) and (group_size == -1 or group_size > 0)):
        _bad("group_size", group_size, "-1 (all non-outlier input columns in one group) or a positive int")
    if not (isinstance(outlier_size, int) and not isinstance(outlier_size, bool) and outlier_size >= 0):
        _bad("outlier_size", outlier_size, "a non-negative int (number of outlier input columns)")
    for opt, v in (("packed", packed), ("perm", perm), ("norm", norm)):
        if not isinstance(v, bool):
            _bad(opt, v, "True or False")
    if outlier_size:
        if not (isinstance(outlier_vector_len, int) and not isinstance(outlier_vector_len, bool)
                and 2 <= outlier_vector_len <= 32):
            _bad("outlier_vector_len", outlier_vector_len, "an int in [2, 32] (VPTQ enables outliers only for > 1)")
        _check_entries("num_outlier_centroids", num_outlier_centroids)
    else:  # irrelevant without outliers: normalized so that they do not change the key
        outlier_vector_len, num_outlier_centroids = 0, 0
    index_bits = int(math.log2(num_centroids))
    res_bits = int(math.log2(num_res_centroids)) if num_res_centroids else 0
    if packed and res_bits > index_bits:
        _bad("num_res_centroids", num_res_centroids,
             f"<= num_centroids = {num_centroids} when packed (VPTQ's unpack masks the residual index "
             f"with the main index width, {index_bits} bits)")
    total_bits = index_bits + res_bits

    tensors = [TensorField("centroids", "float16", (_NC, f"{num_centroids * vector_len}"), "table")]
    if packed:
        tensors.append(TensorField("indices", "int32", (_NC, _ROWS, f"({_G} * {total_bits} + 31) // 32"), "codes"))
    else:
        tensors.append(TensorField("indices", "int16", (_NC, _ROWS, _G), "codes"))
    if num_res_centroids:
        tensors.append(TensorField("res_centroids", "float16", (_NC, f"{num_res_centroids * vector_len}"), "table"))
        if not packed:
            tensors.append(TensorField("res_indices", "int16", (_NC, _ROWS, _G), "codes"))
    if outlier_size:
        tensors.append(TensorField("outlier_centroids", "float16", ("1", f"{num_outlier_centroids * outlier_vector_len}"),
                                   "table"))
        tensors.append(TensorField("outlier_indices", "int16",
                                   ("1", f"(N + {outlier_vector_len - 1}) // {outlier_vector_len}", "outlier_size"),
                                   "codes"))
    transforms, scales = [], []
    if perm:
        tensors.append(TensorField("perm", "int16" if packed else "int64", ("K",), "perm"))
        transforms.append(Transform("permutation", side="input", placement="online", tensor="perm"))
    if norm:
        tensors += [TensorField("weight_scale", "float16", ("K",), "scales"),
                    TensorField("weight_bias", "float16", ("K",), "scales")]
        scales.append(ScaleLevel("weight_scale", "col", "float16", op="mul"))

    decode = Decode("vector_codebook", bits=index_bits, params=(
        ("vector_len", vector_len), ("vector_axis", "N"), ("entries", num_centroids),
        ("books", "residual" if num_res_centroids else "single"), ("res_entries", num_res_centroids), ("res_bits", res_bits),
        ("index_layout", "merged_lsb_stream" if packed else "uint16"),
        ("outlier_size", outlier_size), ("outlier_vector_len", outlier_vector_len),
        ("outlier_entries", num_outlier_centroids), ("outlier_position", "first"),
        ("compute_dtype", "float16"),
        ("row_padding", "N padded to a multiple of vector_len; padded rows dropped"),
        ("perm_semantics", "W = W'[:, argsort(perm)]; int16 perm read as uint16" if perm else ""),
        ("col_bias", "weight_bias" if norm else ""),
        ("col_affine", "W[:, i] = W[:, i] * weight_scale[i] + weight_bias[i] (two fp16 ops)" if norm else ""),
    ))
    packing = (Packing("vptq_index", "int32", field_bits=total_bits, order="lsb", axis="K", straddle=True)
               if packed else Packing("vptq_index_u16", "int16", field_bits=16, order="lsb", axis="K",
                                      fields_per_word=1))
    k_reason = (f"in_features minus outlier_size ({outlier_size}) must split into groups of {group_size}; "
                f"valid K are {outlier_size} + a multiple of {group_size}"
                if group_size > 0 else "any K > outlier_size")
    return FormatSpec(
        name=vptq_name(vector_len, num_centroids, num_res_centroids), family="vptq", packing=packing,
        decode=decode, tensors=tuple(tensors), scales=tuple(scales), transforms=tuple(transforms),
        params=(("vector_len", vector_len), ("num_centroids", num_centroids),
                ("num_res_centroids", num_res_centroids), ("group_size", group_size),
                ("outlier_size", outlier_size), ("outlier_vector_len", outlier_vector_len),
                ("num_outlier_centroids", num_outlier_centroids), ("packed", packed), ("perm", perm),
                ("norm", norm), ("index_bits", index_bits), ("res_bits", res_bits),
                ("k_multiple_reason", k_reason),
                ("shape_rules", (("K > outlier_size", f"in_features must exceed outlier_size ({outlier_size})"),
                                 ("group_size < 0 or (K - outlier_size) % group_size == 0", k_reason)))),
        k_multiple=group_size if group_size > 0 and outlier_size % group_size == 0 else 1,
        description="VPTQ: vectors of vector_len consecutive output rows per input column, looked up in a "
                    "per-group fp16 codebook (+ residual codebook); optional outlier columns with their own "
                    "codebook placed first, input-column permutation and per-input-column scale/bias.")


def _geometry(spec: FormatSpec, N: int, K: int) -> tuple[int, int, int]:
    """(group size G, number of groups nc, outlier_size), checking that K splits into groups."""
    p = dict(spec.params)
    o, gs = p["outlier_size"], p["group_size"]
    main = K - o
    if main <= 0:
        raise SpecError(f"{spec.name}: K = {K} must exceed outlier_size = {o}")
    G = main if gs < 0 else gs
    if main % G:
        raise SpecError(f"{spec.name}: K - outlier_size = {main} is not a multiple of group_size = {G}; "
                        f"valid K are outlier_size + a multiple of group_size, e.g. {o + -(-main // G) * G}")
    if spec.param("packed") and K > 65536 and spec.param("perm"):
        raise SpecError(f"{spec.name}: K = {K} does not fit the packed layout's uint16 perm (K <= 65536)")
    return G, main // G, o


def _vectors_to_columns(vecs: torch.Tensor, rows: int) -> torch.Tensor:
    """[nc, r, G, vl] gathered vectors -> the weight block [r*vl - padding..., nc*G] (rows not yet cut)."""
    nc, r, G, vl = vecs.shape
    return vecs.permute(0, 1, 3, 2).reshape(nc, r * vl, G).permute(1, 0, 2).reshape(r * vl, nc * G)[:rows]


def dequantize_vptq(spec: FormatSpec, t: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
    """VPTQ's `dequant`, step for step in fp16, upcast to float32 at the end."""
    p = dict(spec.params)
    G, nc, O = _geometry(spec, N, K)
    vl, ib, rb = p["vector_len"], p["index_bits"], p["res_bits"]
    if p["packed"]:
        merged = unpack_index_stream(t["indices"], ib + rb, G)
        idx, ridx = merged & ((1 << ib) - 1), merged >> ib
    else:
        idx = t["indices"].to(torch.int64) & 0xFFFF
        ridx = t["res_indices"].to(torch.int64) & 0xFFFF if rb else None
    books = t["centroids"].view(nc, p["num_centroids"], vl)
    vecs = torch.stack([gather_decode(books[g], idx[g]) for g in range(nc)])
    if rb:
        res_books = t["res_centroids"].view(nc, p["num_res_centroids"], vl)
        vecs = vecs + torch.stack([gather_decode(res_books[g], ridx[g]) for g in range(nc)])
    W = _vectors_to_columns(vecs, N)
    if O:
        ovl = p["outlier_vector_len"]
        obook = t["outlier_centroids"].view(p["num_outlier_centroids"], ovl)
        ovecs = gather_decode(obook, t["outlier_indices"].to(torch.int64) & 0xFFFF)
        W = torch.cat([_vectors_to_columns(ovecs, N), W], dim=1)
    if p["perm"]:
        perm = t["perm"].to(torch.int64) & 0xFFFF if p["packed"] else t["perm"]
        W = W[:, torch.argsort(perm)]
    if p["norm"]:
        W = W * t["weight_scale"]
        W = W + t["weight_bias"]
    return W.to(torch.float32)


def _column_vectors(block: torch.Tensor, vl: int) -> torch.Tensor:
    """A weight block [N, C] -> its vectors [ceil(N/vl), C, vl] along N (zero-padded rows)."""
    N, C = block.shape
    r = -(-N // vl)
    padded = torch.zeros(r * vl, C)
    padded[:N] = block
    return padded.view(r, vl, C).permute(0, 2, 1)


def _fit(X: torch.Tensor, k: int, iters: int, gen: torch.Generator, w: torch.Tensor | None):
    """k-means on X [n, d]; the codebook is rounded to fp16 and X re-assigned to the rounded codebook.

    With n <= k every row is its own centroid, and the fp16 rounding of a row is its nearest fp16
    point, so the k-means assignment stays optimal and the (n x k) search is skipped."""
    C, assign = kmeans(X, k, iters, gen, w)
    C16 = C.to(torch.float16)
    return C16, (assign if X.shape[0] <= k else nearest_codeword(X, C16))


def _u16(codes: torch.Tensor) -> torch.Tensor:
    """Non-negative codes < 65536 -> int16 with the uint16 bit pattern (VPTQ's storage)."""
    return torch.where(codes >= 32768, codes - 65536, codes).to(torch.int16)


def quantize_vptq(spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
    """k-means encoder. calib: hessian_diag [K] (weights each vector by its column's H_ii, as VPTQ's
    'hessian' k-means mode; also orders the perm), kmeans_iters (default 10), seed (default 0).

    Columns: with perm, sorted by H_ii (or by squared column norm without a Hessian) descending, so
    the outlier block holds the largest columns; without perm the first outlier_size columns are it."""
    unknown = sorted(set(calib) - set(_CALIB))
    if unknown:
        raise SpecError(f"quantize({spec.name}): unknown calibration keys {unknown}; valid: {list(_CALIB)}")
    p = dict(spec.params)
    N, K = W.shape
    G, nc, O = _geometry(spec, N, K)
    vl = p["vector_len"]
    iters = int(calib.get("kmeans_iters", 10))
    gen = torch.Generator().manual_seed(int(calib.get("seed", 0)))
    hdiag = calib.get("hessian_diag")
    if hdiag is not None:
        hdiag = torch.as_tensor(hdiag, dtype=torch.float32).reshape(-1)
        if hdiag.numel() != K or (hdiag < 0).any():
            raise SpecError(f"quantize({spec.name}): hessian_diag must be K = {K} non-negative values")
    out: dict[str, torch.Tensor] = {}
    Wn = W
    if W.abs().max() > 65504:
        raise SpecError(f"quantize({spec.name}): |W| exceeds the float16 range of VPTQ's codebooks and scales")
    if p["norm"]:  # VPTQ's init_norm: std and mean over the output dim, per input column
        scale = torch.nan_to_num(W.std(dim=0), nan=1.0).to(torch.float16)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        bias = W.mean(dim=0).to(torch.float16)
        out["weight_scale"], out["weight_bias"] = scale, bias
        Wn = (W - bias.float()) / scale.float()
    order = torch.arange(K)
    if p["perm"]:
        score = hdiag if hdiag is not None else (W * W).sum(0)
        order = torch.argsort(score, descending=True, stable=True)
        out["perm"] = _u16(order) if p["packed"] else order
    Wp = Wn[:, order]
    wcol = hdiag[order] if hdiag is not None else None

    if O:
        ovl, ok = p["outlier_vector_len"], p["num_outlier_centroids"]
        ov = _column_vectors(Wp[:, :O], ovl)
        ow = wcol[:O].expand(ov.shape[0], O).reshape(-1) if wcol is not None else None
        C16, oidx = _fit(ov.reshape(-1, ovl), ok, iters, gen, ow)
        out["outlier_centroids"] = C16.reshape(1, -1)
        out["outlier_indices"] = _u16(oidx.view(1, ov.shape[0], O))
    books, idx, res_books, ridx = [], [], [], []
    for g in range(nc):
        cols = slice(O + g * G, O + (g + 1) * G)
        v = _column_vectors(Wp[:, cols], vl)
        X = v.reshape(-1, vl)
        w = wcol[cols].expand(v.shape[0], G).reshape(-1) if wcol is not None else None
        C16, i = _fit(X, p["num_centroids"], iters, gen, w)
        books.append(C16.reshape(-1))
        idx.append(i.view(v.shape[0], G))
        if p["num_res_centroids"]:
            R16, ri = _fit(X - C16.float()[i], p["num_res_centroids"], iters, gen, w)
            res_books.append(R16.reshape(-1))
            ridx.append(ri.view(v.shape[0], G))
    out["centroids"] = torch.stack(books)
    idx = torch.stack(idx)
    if res_books:
        out["res_centroids"] = torch.stack(res_books)
    if p["packed"]:
        merged = (torch.stack(ridx) << p["index_bits"]) | idx if ridx else idx
        out["indices"] = pack_index_stream(merged, p["index_bits"] + p["res_bits"])
    else:
        out["indices"] = _u16(idx)
        if ridx:
            out["res_indices"] = _u16(torch.stack(ridx))
    return out


def synthetic_vptq(spec: FormatSpec, N: int, K: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Valid random tensors at any size without the k-means encoder (see ir.synthetic): fp16 codebooks
    ~ N(0, 1) (the scale of VPTQ's normalized weights), every index below its codebook's size, a random
    perm, column scales in [0.005, 0.015] and biases in [-0.005, 0.005]."""
    p = dict(spec.params)
    _geometry(spec, N, K)
    schema = {name: shape for name, (shape, _) in spec.tensor_schema(N, K).items()}
    out = {name: torch.randn(shape, generator=gen).to(torch.float16)
           for name, shape in schema.items() if name.endswith("centroids")}

    def codes(name: str, entries: int) -> torch.Tensor:
        return _u16(torch.randint(0, entries, schema[name], generator=gen))

    if p["packed"]:  # any merged value is valid: idx < 2**index_bits = num_centroids, res < 2**res_bits
        out["indices"] = torch.randint(-2 ** 31, 2 ** 31, schema["indices"], generator=gen).to(torch.int32)
    else:
        out["indices"] = codes("indices", p["num_centroids"])
        if p["num_res_centroids"]:
            out["res_indices"] = codes("res_indices", p["num_res_centroids"])
    if p["outlier_size"]:
        out["outlier_indices"] = codes("outlier_indices", p["num_outlier_centroids"])
    if p["perm"]:
        order = torch.randperm(K, generator=gen)
        out["perm"] = _u16(order) if p["packed"] else order
    if p["norm"]:
        out["weight_scale"] = (0.005 + 0.01 * torch.rand(K, generator=gen)).to(torch.float16)
        out["weight_bias"] = (0.01 * torch.rand(K, generator=gen) - 0.005).to(torch.float16)
    return out


class _VPTQCodec:
    quantize = staticmethod(quantize_vptq)
    dequantize = staticmethod(dequantize_vptq)
    synthetic = staticmethod(synthetic_vptq)


register_codec("vptq", _VPTQCodec())
register_format("vptq", build_vptq)
for _vl, _k, _r, _doc in (
        (8, 65536, 256, "VPTQ v8-k65536-256: 2-bit main + 1-bit residual index per weight (README config; 1 MiB book on top)"),
        (8, 65536, 0, "VPTQ v8-k65536: 2-bit index per weight, no residual (1 MiB book on top)"),
        (8, 4096, 0, "VPTQ v8-k4096: 1.5-bit index per weight; 4096-entry codebook (quant_gemv_v2 size)"),
        (16, 65536, 65536, "VPTQ v16-k65536-65536: 1-bit main + 1-bit residual index per weight (two 2 MiB books on top)")):
    register_format(vptq_name(_vl, _k, _r),
                    functools.partial(build_vptq, vector_len=_vl, num_centroids=_k, num_res_centroids=_r),
                    summary=_doc)
