"""HIGGS (Malinovskii et al.; transformers integrations/higgs.py, run through FLUTE): block Hadamard
rotation, then an MSE-optimal Gaussian grid of dimension p (1 or 2) with a scale per group.

Grids: the published tables of get_higgs_grid(p, 2**(p*bits)) in ir/data/higgs_grids.json (source
named there); the decoder uses them in fp16, as quantize_with_higgs hands `grid.to(float16)` to FLUTE.

Canonical storage here (a documented plain layout, not FLUTE's):
  codes  int32 [N, K*bits/32]  one (p*bits)-bit code per p consecutive input columns, LSB-first along
                               K (code j in stream bits [j*p*bits, (j+1)*p*bits) of the row), codes
                               straddle words for 3-bit (p=1) and 6-bit (p=2, bits=3) fields.
                               For p=2, bits=4 the bytes equal HIGGS's own uint8 `codes` [N, K/2].
  scales fp16  [N, K/group_size]  (HIGGS's [out, in/group_size] scales).
  grid   fp16  [2**(p*bits), p]  the grid the decoder reads (HiggsLinear stores it in the checkpoint as
                                 FLUTE's `tables` / `tables2` parameters); the encoder writes the
                                 published grid, Decode.table.
FLUTE's checkpoint `weight` (int16 [N*bits/16, K]) is the same codes split into per-element bit
fields (p=2: hi = c >> bits for column 2j, lo = c & (2**bits - 1) for column 2j+1; tables2[hi][lo] =
grid[c]) and then reordered by flute.tune.tune_and_pack for the kernel template the tuner picked on
the GPU at hand (tile sizes, SM count). That reordering is not reproducible from the format alone, so
no importer from FLUTE's packed `weight` exists yet; importing needs FLUTE's tune metadata.

Decode: W_hat[o, i] = grid[code(o, i)][i % p] * scales[o, i // group_size]  (an fp16 multiply);
HIGGS's layer computes y = W_hat . (H x) with H the normalized Sylvester Hadamard on each
hadamard_size block of x (hadamard_transform(x, scale=1/sqrt(hadamard_size))). `dequantize`
returns the effective weight W = W_hat @ H (blockwise along K), so that y = x @ W.T; H is applied
in float64 to the exact fp16 W_hat and the result rounded to float32.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from ..bitpack import pack_cols, unpack_cols
from ..codebook import gather_decode, nearest_codeword
from ..hadamard import block_hadamard
from ..registry import register_codec, register_format
from ..spec import Decode, FormatSpec, Packing, ScaleLevel, SpecError, TensorField, Transform

_GRID_FILE = Path(__file__).resolve().parent.parent / "data" / "higgs_grids.json"
GROUP_SIZES = (64, 128, 256)          # transformers' HiggsConfig
HADAMARD_SIZES = (64, 128, 256, 512, 1024, 2048, 4096)


@functools.lru_cache(maxsize=None)
def _grids() -> dict[str, tuple[tuple[float, ...], ...]]:
    with open(_GRID_FILE) as f:
        return {k: tuple(tuple(r) for r in v) for k, v in json.load(f)["grids"].items()}


def higgs_grid(p: int, bits: int) -> torch.Tensor:
    """The published grid for (p, bits): float32 [2**(p*bits), p]."""
    key = f"p{p}_b{bits}"
    grids = _grids()
    if key not in grids:
        raise SpecError(f"higgs: no published grid for p = {p}, bits = {bits}; supported (p, bits): "
                        f"{sorted((int(k[1]), int(k[4])) for k in grids)}")
    return torch.tensor(grids[key], dtype=torch.float32)


def higgs_name(p: int, bits: int, group_size: int, hadamard_size: int) -> str:
    base = f"higgs_p{p}_b{bits}"
    return base if (group_size, hadamard_size) == (256, 1024) else f"{base}_g{group_size}_h{hadamard_size}"


def build_higgs(p: int = 2, bits: int = 4, group_size: int = 256, hadamard_size: int = 1024) -> FormatSpec:
    """HIGGS: 1024-block Hadamard on x, p-dim MSE-optimal Gaussian grid codes, fp16 scale per 256 along K."""
    if p not in (1, 2) or isinstance(p, bool):
        raise SpecError(f"higgs: p = {p!r} is invalid; expected one of [1, 2] (grid dimension)")
    if bits not in (2, 3, 4) or isinstance(bits, bool):
        raise SpecError(f"higgs: bits = {bits!r} is invalid; expected one of [2, 3, 4] (bits per weight)")
    if group_size not in GROUP_SIZES or isinstance(group_size, bool):
        raise SpecError(f"higgs: group_size = {group_size!r} is invalid; expected one of {list(GROUP_SIZES)}")
    if hadamard_size not in HADAMARD_SIZES or hadamard_size % group_size:
        raise SpecError(f"higgs: hadamard_size = {hadamard_size!r} is invalid; expected one of "
                        f"{[h for h in HADAMARD_SIZES if h % group_size == 0]} (a multiple of group_size)")
    grid = higgs_grid(p, bits)
    field = p * bits
    table = tuple(float(v) for v in grid.reshape(-1).tolist())
    if p == 1:
        decode = Decode("lut", bits=bits, table=table, params=(("table_dtype", "float16"),))
    else:
        decode = Decode("vector_codebook", bits=field, table=table, params=(
            ("vector_len", 2), ("vector_axis", "K"), ("entries", 2 ** field), ("books", "single"),
            ("table_dtype", "float16"),
            ("flute_pair_split", "hi = code >> bits (column 2j), lo = code & (2**bits-1) (column 2j+1)")))
    return FormatSpec(
        name=higgs_name(p, bits, group_size, hadamard_size), family="higgs",
        packing=Packing("higgs_codes", "int32", field_bits=field, order="lsb", axis="K",
                        straddle=bool(32 % field)),
        decode=decode,
        tensors=(TensorField("codes", "int32", ("N", "K * bits // 32"), "codes"),
                 TensorField("scales", "float16", ("N", "K // group_size"), "scales"),
                 TensorField("grid", "float16", (str(2 ** field), str(p)), "table")),
        scales=(ScaleLevel("scales", "group", "float16", axis="K", size=group_size),),
        transforms=(Transform("hadamard", side="input", placement="online", size=hadamard_size, normalized=True),),
        params=(("p", p), ("bits", bits), ("group_size", group_size), ("hadamard_size", hadamard_size),
                ("k_multiple_reason", f"the Hadamard transform works on blocks of {hadamard_size} input "
                                      f"columns (HIGGS pads in_features to it)")),
        k_multiple=hadamard_size,
        description="HIGGS: x rotated by a normalized block Hadamard; weights are p-dim points of the "
                    "published MSE-optimal Gaussian grid times an fp16 group scale.")


def decode_higgs_rotated(spec: FormatSpec, t: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
    """W_hat (fp16 [N, K]): the weight in the rotated basis, grid[codes] * scales in fp16."""
    p, bits, gs = spec.param("p"), spec.param("bits"), spec.param("group_size")
    codes = unpack_cols(t["codes"], p * bits, K // p, word_bits=32, straddle=bool(32 % (p * bits)))
    vals = gather_decode(t["grid"], codes).reshape(N, K)
    return vals * t["scales"].repeat_interleave(gs, dim=1)


def dequantize_higgs(spec: FormatSpec, t: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
    """The effective W = W_hat @ H (normalized block Hadamard along K): y = x @ W.T = W_hat . (H x)."""
    return block_hadamard(decode_higgs_rotated(spec, t, N, K).to(torch.float32), spec.param("hadamard_size"))


def quantize_higgs(spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
    """Rotate (W @ H blockwise), scale each group by its RMS (fp16), nearest grid point per p-vector.

    HIGGS's own quantizer uses one scale per Hadamard block (||block|| / sqrt(hadamard_size), the
    rotated block's RMS), repeated over its groups; the per-group RMS used here is the same rule at
    group granularity, which the stored layout allows (on Gaussian 256x1024 it lowers the relative
    error by 0.1-0.3 %, e.g. 0.0876 vs 0.0878 at p=2, 4 bits). With group_size == hadamard_size
    the two agree up to the fp16 rounding of the scale."""
    if calib:
        raise SpecError(f"quantize({spec.name}): takes no calibration data, got {sorted(calib)}")
    p, bits, gs = spec.param("p"), spec.param("bits"), spec.param("group_size")
    N, K = W.shape
    rot = block_hadamard(W, spec.param("hadamard_size")).reshape(N, K // gs, gs)
    scales = rot.pow(2).mean(-1).sqrt().to(torch.float16)
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    x = (rot / scales.float().unsqueeze(-1)).reshape(-1, p)
    codes = nearest_codeword(x, higgs_grid(p, bits)).reshape(N, K // p)
    return {"codes": pack_cols(codes, p * bits, word_bits=32, straddle=bool(32 % (p * bits))), "scales": scales,
            "grid": higgs_grid(p, bits).to(torch.float16)}


class _HiggsCodec:
    quantize = staticmethod(quantize_higgs)
    dequantize = staticmethod(dequantize_higgs)


register_codec("higgs", _HiggsCodec())
register_format("higgs", build_higgs)
for _p in (1, 2):
    for _b in (2, 3, 4):
        register_format(higgs_name(_p, _b, 256, 1024), functools.partial(build_higgs, p=_p, bits=_b),
                        summary=f"HIGGS p={_p} {_b}-bit: {2 ** (_p * _b)}-point {_p}-D Gaussian grid, "
                                f"group 256, online Hadamard 1024")
