"""AQLM (Vahe1994/AQLM, inference_lib/src/aqlm): additive quantization with M codebooks of og x ig blocks.

Canonical layout (QuantizedLinear in inference.py):
  codebooks fp16 [M, 2**nbits, og, ig]
  codes     int8 (nbits <= 8) / int16 (nbits <= 16) [N/og, K/ig, M]   (utils.get_int_dtype)
            stored signed: values >= 2**(nbits-1) have 2**nbits subtracted (utils.pack_int_data);
            decode reads `code mod 2**nbits` (utils.unpack_int_data)
  scales    fp16 [N/og, 1, 1, 1]
The Linear's bias is not part of the format.

Decode (utils._dequantize_weight through F.embedding_bag(mode="sum")):
  W[o, i] = scales[o//og] * sum_m codebooks[m, codes[o//og, i//ig, m] mod 2**nbits, o % og, i % ig]
The sum over books accumulates in float32 (embedding_bag's accumulator) and is rounded to fp16 once;
the scale multiply is an fp16 op.
"""
from __future__ import annotations

import functools

import torch

from ..codebook import gather_decode, kmeans, nearest_codeword
from ..registry import register_codec, register_format
from ..spec import Decode, FormatSpec, Packing, ScaleLevel, SpecError, TensorField

_CALIB = ("kmeans_iters", "seed")


def _bad(option: str, value, valid: str) -> None:
    raise SpecError(f"aqlm: {option} = {value!r} is invalid; expected {valid}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def aqlm_name(num_codebooks: int, nbits: int, in_group_size: int, out_group_size: int) -> str:
    """aqlm_1x16 / aqlm_2x8 for the paper's 1x8 blocks; the block shape appended otherwise."""
    base = f"aqlm_{num_codebooks}x{nbits}"
    return base if (out_group_size, in_group_size) == (1, 8) else f"{base}_g{out_group_size}x{in_group_size}"


def code_dtype(nbits: int) -> str:
    """AQLM's get_int_dtype for the widths this IR stores."""
    return "int8" if nbits <= 8 else "int16"


def build_aqlm(num_codebooks: int = 1, nbits: int = 16, in_group_size: int = 8, out_group_size: int = 1) -> FormatSpec:
    """AQLM additive quantization: M codebooks of 2^nbits fp16 og x ig blocks, per-output-group scale."""
    if not (_is_int(num_codebooks) and 1 <= num_codebooks <= 8):
        _bad("num_codebooks", num_codebooks, "an int in [1, 8]")
    if not (_is_int(nbits) and 1 <= nbits <= 16):
        _bad("nbits", nbits, "an int in [1, 16] (codes are stored as int8 or int16)")
    if not (_is_int(in_group_size) and 1 <= in_group_size <= 64):
        _bad("in_group_size", in_group_size, "an int in [1, 64]")
    if not (_is_int(out_group_size) and 1 <= out_group_size <= 64):
        _bad("out_group_size", out_group_size, "an int in [1, 64]")
    entries, og, ig = 2 ** nbits, out_group_size, in_group_size
    scale = (ScaleLevel("scales", "row", "float16") if og == 1
             else ScaleLevel("scales", "group", "float16", axis="N", size=og))
    return FormatSpec(
        name=aqlm_name(num_codebooks, nbits, ig, og), family="aqlm",
        packing=Packing("aqlm_codes", code_dtype(nbits), field_bits=8 if nbits <= 8 else 16, axis="K",
                        fields_per_word=1),
        decode=Decode("vector_codebook", bits=nbits, signed=True, params=(
            ("vector_len", og * ig), ("block", (og, ig)), ("vector_axis", "K"), ("entries", entries),
            ("books", "additive"), ("num_books", num_codebooks), ("code_map", "mod 2**nbits"),
            ("sum_dtype", "float32"), ("compute_dtype", "float16"))),
        tensors=(TensorField("codebooks", "float16", (str(num_codebooks), str(entries), str(og), str(ig)), "table"),
                 TensorField("codes", code_dtype(nbits), ("N // out_group_size", "K // in_group_size",
                                                          "num_codebooks"), "codes"),
                 TensorField("scales", "float16", ("N // out_group_size", "1", "1", "1"), "scales")),
        scales=(scale,),
        params=(("num_codebooks", num_codebooks), ("nbits", nbits), ("in_group_size", ig),
                ("out_group_size", og), ("k_multiple_reason", f"codes cover in_group_size = {ig} input columns"),
                ("n_multiple_reason", f"codes cover out_group_size = {og} output rows")),
        k_multiple=ig, n_multiple=og,
        description="AQLM: each og x ig weight block is the sum of M fp16 codebook entries, times a "
                    "per-output-group fp16 scale; codes stored signed.")


def unpack_codes(codes: torch.Tensor, nbits: int) -> torch.Tensor:
    """Signed stored codes -> code indices in [0, 2**nbits) (AQLM's unpack_int_data)."""
    return codes.to(torch.int64) % (2 ** nbits)


def pack_codes(codes: torch.Tensor, nbits: int) -> torch.Tensor:
    """Code indices in [0, 2**nbits) -> AQLM's signed storage (pack_int_data)."""
    c = codes.to(torch.int64)
    c = torch.where(c >= 2 ** (nbits - 1), c - 2 ** nbits, c)
    return c.to(getattr(torch, code_dtype(nbits)))


def dequantize_aqlm(spec: FormatSpec, t: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
    p = dict(spec.params)
    M = p["num_codebooks"]
    codes = unpack_codes(t["codes"], p["nbits"])
    books = t["codebooks"].to(torch.float32)
    blocks = sum(gather_decode(books[m], codes[..., m]) for m in range(M))  # [N/og, K/ig, og, ig], fp32 sum
    blocks = blocks.to(torch.float16) * t["scales"]
    return blocks.permute(0, 2, 1, 3).reshape(N, K).to(torch.float32)


def quantize_aqlm(spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
    """Greedy residual k-means: rows scaled by their output group's norm, book m fitted on what books
    0..m-1 left, then one pass re-choosing each book's codes with the others fixed. Not AQLM's beam
    search and codebook fine-tuning: expect a higher error than the paper's at the same bits.
    calib: kmeans_iters (default 10), seed (default 0)."""
    unknown = sorted(set(calib) - set(_CALIB))
    if unknown:
        raise SpecError(f"quantize({spec.name}): unknown calibration keys {unknown}; valid: {list(_CALIB)}")
    p = dict(spec.params)
    og, ig, M, nbits = p["out_group_size"], p["in_group_size"], p["num_codebooks"], p["nbits"]
    N, K = W.shape
    iters = int(calib.get("kmeans_iters", 10))
    gen = torch.Generator().manual_seed(int(calib.get("seed", 0)))
    groups = W.reshape(N // og, og, K // ig, ig).permute(0, 2, 1, 3)      # [N/og, K/ig, og, ig]
    scales = groups.pow(2).sum(dim=(1, 2, 3)).sqrt().to(torch.float16)
    scales = torch.where(scales == 0, torch.ones_like(scales), scales).reshape(-1, 1, 1, 1)
    X = (groups / scales.float()).reshape(-1, og * ig)
    books, codes = [], []
    residual = X.clone()
    for _ in range(M):
        C, assign = kmeans(residual, 2 ** nbits, iters, gen)
        C16 = C.to(torch.float16)
        idx = assign if residual.shape[0] <= 2 ** nbits else nearest_codeword(residual, C16)
        residual -= C16.float()[idx]
        books.append(C16)
        codes.append(idx)
    if M > 1:  # one coordinate-descent pass: each book's codes re-chosen with the others fixed
        for m in range(M):
            target = residual + books[m].float()[codes[m]]
            codes[m] = nearest_codeword(target, books[m])
            residual = target - books[m].float()[codes[m]]
    return {
        "codebooks": torch.stack(books).reshape(M, 2 ** nbits, og, ig),
        "codes": pack_codes(torch.stack(codes, dim=-1).reshape(N // og, K // ig, M), nbits),
        "scales": scales,
    }


class _AQLMCodec:
    quantize = staticmethod(quantize_aqlm)
    dequantize = staticmethod(dequantize_aqlm)


register_codec("aqlm", _AQLMCodec())
register_format("aqlm", build_aqlm)
register_format("aqlm_1x16", functools.partial(build_aqlm, num_codebooks=1, nbits=16),
                summary="AQLM 1x16: one 65536-entry codebook of 1x8 fp16 blocks (2 bits/weight + 1 MiB book)")
register_format("aqlm_2x8", functools.partial(build_aqlm, num_codebooks=2, nbits=8),
                summary="AQLM 2x8: two additive 256-entry codebooks of 1x8 fp16 blocks (2 bits/weight)")
