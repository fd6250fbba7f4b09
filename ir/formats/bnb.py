"""bitsandbytes 4-bit formats: `bnb_nf4` and `bnb_fp4` (FORMATS.md section 6).

Origin: bitsandbytes 0.50.2 (`bitsandbytes/functional.py` quantize_4bit / dequantize_4bit /
quantize_blockwise / create_dynamic_map, `bitsandbytes/backends/default/ops.py`).

The weight W (N, K) is flattened row-major (n = N*K elements) and cut into blocks of `blocksize`
consecutive elements. Each block keeps its absmax (fp32); each element becomes the 4-bit index of
the nearest entry of a 16-value table (NF4 or FP4) to w / absmax. Two codes share a byte, element
2j in the HIGH nibble. Decode: w = table[q] * absmax, multiplied in fp32 and rounded once to the
output dtype (bitsandbytes' CUDA, C and torch kernels all do this).

Double quantization (bitsandbytes `compress_statistics`, on by default in `Params4bit`):
offset = mean(absmax) (fp32); absmax - offset is blockwise 8-bit quantized with the signed
"dynamic" map in blocks of 256 absmax values:
    absmax[b] = nested_quant_map[qabsmax[b]] * nested_absmax[b // 256] + nested_offset

Canonical tensors are bitsandbytes' serialized keys, with their exact dtypes and shapes:
  weight            uint8 [N*K/2, 1]       (what quantize_4bit returns / Params4bit stores)
  absmax            float32 [N*K/blocksize] (uint8 codes with double quant)
  quant_map         float32 [16]            (bitsandbytes ignores it when dequantizing; so do we,
                                             after checking it is the format's table)
  nested_absmax     float32 [ceil(n_blocks/256)]
  nested_quant_map  float32 [256]
  nested_offset     float32 0-d tensor: bitsandbytes serializes it as a Python float inside the
                    packed `quant_state.bitsandbytes__<type>` JSON blob and `QuantState.from_dict`
                    turns it back into a 0-d float32 tensor; that tensor is what we store.
The non-tensor serialized fields (quant_type, blocksize, nested_blocksize, nested_dtype) are
spec params.

The encoder reproduces bitsandbytes' default (pure torch) backend bit for bit: 4-bit codes by
`bucketize` against the fp32 midpoints of the sorted table (ties go to the lower value), nested
codes likewise against the dynamic map. Where other bitsandbytes kernels round differently (the
decoded weights of any valid tensors are the same everywhere):
- CUDA 4-bit kernels compare against decimal threshold literals (e.g. FP4 0.583333f against the
  fp32 midpoint 0.58333334), so codes can differ in bands a few ulps wide; CUDA FP4 gives tiny
  |x/absmax| <= 0.0026 the code of their sign (0 or 8) while the torch backend gives 0 to x <= 0
  and 8 to x > 0. Both codes decode to zero.
- The native CPU 8-bit blockwise quantizer (used by bitsandbytes on CPU for the nested absmax)
  rounds x/absmax to one of 65536 bins before a table look-up, so its nested codes can differ from
  the nearest entry, most often near zero where the dynamic map is denser than the bins.
"""
from __future__ import annotations

import torch

from ..registry import register_codec, register_format
from ..spec import Decode, FormatSpec, Packing, ScaleLevel, SpecError, TensorField

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # quantize_4bit's accepted blocksizes
QUANT_STORAGES = ("uint8",)
NESTED_BLOCKSIZE = 256  # quantize_4bit always compresses absmax in blocks of 256

# The 16 NF4 values (QLoRA normal-float quantiles), as float32.
NF4_TABLE = tuple(torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=torch.float32).tolist())

# FP4 (1 sign, 2 exponent, 1 mantissa bit, bias 2) in bit-pattern order, divided by its max 12 in
# float32. Code 8 is +0.0 (not -0.0) exactly as in bitsandbytes' quant_map.
FP4_TABLE = tuple((torch.tensor([
    0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0,
], dtype=torch.float32) / 12.0).tolist())

TABLES = {"nf4": NF4_TABLE, "fp4": FP4_TABLE}


# -- reusable decode/encode helpers (pure torch; twins of the kernel helpers) ----------------------
def unpack_nibbles_hi_first(packed: torch.Tensor) -> torch.Tensor:
    """uint8 bytes [n/2] (any shape) -> int64 codes [n]; byte j holds element 2j in its high nibble."""
    b = packed.reshape(-1).to(torch.int64)
    return torch.stack((b >> 4, b & 0xF), dim=1).reshape(-1)


def unpack_words_hi_first(words: torch.Tensor) -> torch.Tensor:
    """int32 words [..., W] (little-endian views of the packed bytes) -> int64 codes [..., 8*W]: element r of
    a word sits at bit (4r) ^ 4 (byte r // 2, high nibble for even r)."""
    shifts = (torch.arange(8) * 4) ^ 4
    codes = (words.to(torch.int64).unsqueeze(-1) >> shifts) & 0xF
    return codes.reshape(*words.shape[:-1], -1)


def fp16_byte_planes(table) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The 16-entry table rounded to fp16, as two planes of 4 uint32 words: (low bytes, high bytes), entry 4p + i
    in byte i of word p (the register look-up table of the Triton M=1 kernels)."""
    bits = [v & 0xFFFF for v in torch.tensor(list(table), dtype=torch.float32).to(torch.float16)
            .view(torch.int16).tolist()]
    return tuple(tuple(sum(((bits[4 * p + i] >> shift) & 0xFF) << (8 * i) for i in range(4)) for p in range(4))
                 for shift in (0, 8))


def lut_words_fp16(words: torch.Tensor, table) -> torch.Tensor:
    """int32 words [..., W] -> float32 [..., 8*W]: table[code] rounded to fp16 (then exactly to fp32) of each
    element in unpack_words_hi_first order; twin of the Triton `_bnb_lut8` (bitsandbytes' own M=1 kernel
    looks up an fp16 table too)."""
    t16 = torch.tensor(list(table), dtype=torch.float32).to(torch.float16).to(torch.float32)
    return t16[unpack_words_hi_first(words)]


def pack_nibbles_hi_first(codes: torch.Tensor) -> torch.Tensor:
    """int codes [n] (n even, values < 16) -> uint8 bytes [n/2]; element 2j goes to the high nibble."""
    c = codes.reshape(-1).to(torch.uint8)
    return (c[0::2] << 4) | c[1::2]


def lut_block_dequantize(codes: torch.Tensor, table: torch.Tensor, absmax: torch.Tensor,
                         blocksize: int) -> torch.Tensor:
    """w = table[q] * absmax[i // blocksize] in float32 (flat [n]; absmax fp32 [n / blocksize])."""
    vals = table[codes]
    return (vals.view(-1, blocksize) * absmax.view(-1, 1)).reshape(-1)


def dequantize_nested_absmax(qabsmax: torch.Tensor, nested_absmax: torch.Tensor, nested_map: torch.Tensor,
                             offset: torch.Tensor, nested_blocksize: int = NESTED_BLOCKSIZE) -> torch.Tensor:
    """absmax[b] = nested_map[qabsmax[b]] * nested_absmax[b // nested_blocksize] + offset, in float32.

    The last nested block may be short (n_blocks need not be a multiple of nested_blocksize)."""
    vals = nested_map[qabsmax.reshape(-1).to(torch.int64)]
    scale = nested_absmax.repeat_interleave(nested_blocksize)[: vals.numel()]
    return vals * scale + offset


def dynamic_map_signed() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" map (create_dynamic_map(signed=True)), float32 [256].

    For exponent e = 0..6: the 2**e midpoints of linspace(0.1, 1, 2**e + 1) times 10**(e - 6), with
    both signs; plus 0 and 1.0; sorted ascending (so the smallest entry is -0.99297, not -1)."""
    vals = [0.0, 1.0]
    for e in range(7):
        edges = torch.linspace(0.1, 1, 2 ** e + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        vals += (mids * 10 ** (e - 6)).tolist() + (mids * -(10 ** (e - 6))).tolist()
    return torch.tensor(sorted(vals), dtype=torch.float32)


def quantize_to_sorted_table(x: torch.Tensor, table_sorted: torch.Tensor) -> torch.Tensor:
    """Index (int64) of the nearest entry of an ascending table; a tie goes to the lower entry.

    The midpoints are computed in float32, as bitsandbytes' torch backend does."""
    bounds = (table_sorted[:-1] + table_sorted[1:]) / 2
    return torch.bucketize(x, bounds).to(torch.int64)


def blockwise_absmax_quantize(x: torch.Tensor, table_sorted: torch.Tensor,
                              blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax quantization of flat fp32 `x` to indices of an ascending table
    (bitsandbytes' default quantize_blockwise): returns (int64 codes [n], fp32 absmax [ceil(n/bs)]).

    Full blocks scale by the reciprocal of their absmax; a short last block divides by its absmax
    and stores it clamped to >= 1e-38, exactly like the origin."""
    n = x.numel()
    full = n - n % blocksize
    blocks = x[:full].view(-1, blocksize)
    absmax = blocks.abs().max(dim=-1)[0]
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if full < n:
        tail_max = x[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_max.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(x[full:] / tail_max, -1, 1)])
    return quantize_to_sorted_table(scaled, table_sorted), absmax


# -- builders --------------------------------------------------------------------------------------
def _build(quant_type: str, blocksize: int, double_quant: bool, quant_storage: str) -> FormatSpec:
    name = f"bnb_{quant_type}"
    if isinstance(blocksize, bool) or blocksize not in BLOCKSIZES:
        raise SpecError(f"{name}: blocksize = {blocksize!r} is invalid; expected one of {list(BLOCKSIZES)}")
    if not isinstance(double_quant, bool):
        raise SpecError(f"{name}: double_quant = {double_quant!r} is invalid; expected True or False")
    if quant_storage not in QUANT_STORAGES:
        raise SpecError(f"{name}: quant_storage = {quant_storage!r} is invalid; expected one of "
                        f"{list(QUANT_STORAGES)} (other storage dtypes are byte views of the same data)")
    n_blocks = "N*K//blocksize"
    tensors = [
        TensorField("weight", "uint8", ("N*K//2", "1"), "codes"),
        TensorField("absmax", "uint8" if double_quant else "float32", (n_blocks,), "scales"),
        TensorField("quant_map", "float32", ("16",), "table"),
    ]
    params = [
        ("quant_type", quant_type), ("blocksize", blocksize), ("double_quant", double_quant),
        ("quant_storage", quant_storage),
        ("k_multiple_reason", f"bnb blocks of {blocksize} flattened elements must not straddle rows, so "
                              "each scale is absmax[n, k // blocksize] (bitsandbytes' own AVX512/NEON "
                              "dequantizers assume this too)"),
    ]
    nested = None
    if double_quant:
        tensors += [
            TensorField("nested_absmax", "float32", (f"-(-({n_blocks})//nested_blocksize)",), "scales"),
            TensorField("nested_quant_map", "float32", ("256",), "table"),
            TensorField("nested_offset", "float32", (), "scales"),
        ]
        params += [("nested_blocksize", NESTED_BLOCKSIZE), ("nested_dtype", "float32"),
                   ("nested_map", "dynamic_signed_8bit")]
        # absmax = nested_quant_map[q] * nested_absmax[b // 256] + nested_offset (fp32).
        nested = ScaleLevel("nested_absmax", "block", "float32", op="lut_affine", axis="K",
                            size=NESTED_BLOCKSIZE)
    absmax = ScaleLevel("absmax", "block", "uint8" if double_quant else "float32", op="mul", axis="K",
                        size=blocksize, bits=8 if double_quant else 0, quantized_by=nested)
    dq = " with double-quantized absmax" if double_quant else ""
    return FormatSpec(
        name=name,
        family="bnb",
        packing=Packing("bnb_flat", "uint8", 4, order="msb", axis="K", fields_per_word=2),
        decode=Decode("lut", 4, table=TABLES[quant_type],
                      params=(("quant_type", quant_type), ("compute_dtype", "float32"))),
        tensors=tuple(tensors),
        scales=(absmax,),
        params=tuple(params),
        k_multiple=blocksize,
        description=(f"bitsandbytes {quant_type.upper()}: 4-bit LUT codes of the flattened row-major weight, "
                     f"2 per byte high nibble first, fp32 absmax per {blocksize} elements{dq}"),
    )


def build_bnb_nf4(blocksize: int = 64, double_quant: bool = True, quant_storage: str = "uint8") -> FormatSpec:
    """bitsandbytes NF4 (QLoRA): 4-bit normal-float LUT, absmax per block, optional double quant."""
    return _build("nf4", blocksize, double_quant, quant_storage)


def build_bnb_fp4(blocksize: int = 64, double_quant: bool = True, quant_storage: str = "uint8") -> FormatSpec:
    """bitsandbytes FP4 (e2m1, bias 2): 4-bit float LUT, absmax per block, optional double quant."""
    return _build("fp4", blocksize, double_quant, quant_storage)


# -- codec -----------------------------------------------------------------------------------------
class BnbCodec:
    """Reference encoder (bitsandbytes' torch backend, bit for bit) and decoder for bnb_nf4/bnb_fp4."""

    def quantize(self, spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
        if calib:
            raise SpecError(f"{spec.name}: round-to-nearest encoder takes no calibration data, got {sorted(calib)}")
        blocksize = spec.param("blocksize")
        table = torch.tensor(spec.decode.table, dtype=torch.float32)
        order = torch.argsort(table, stable=True)  # identity for NF4; FP4 is in bit-pattern order
        idx, absmax = blockwise_absmax_quantize(W.reshape(-1).float(), table[order], blocksize)
        out = {
            "weight": pack_nibbles_hi_first(order[idx]).unsqueeze(1),
            "absmax": absmax,
            "quant_map": table,
        }
        if spec.param("double_quant"):
            nested_map = dynamic_map_signed()
            offset = absmax.mean()
            qabsmax, nested_absmax = blockwise_absmax_quantize(absmax - offset, nested_map,
                                                               spec.param("nested_blocksize"))
            out.update(absmax=qabsmax.to(torch.uint8), nested_absmax=nested_absmax,
                       nested_quant_map=nested_map, nested_offset=offset)
        return out

    def dequantize(self, spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
        table = torch.tensor(spec.decode.table, dtype=torch.float32)
        if not torch.equal(tensors["quant_map"], table):
            raise SpecError(f"{spec.name}: quant_map {tensors['quant_map'].tolist()} is not the "
                            f"{spec.param('quant_type')} table {list(spec.decode.table)}; wrong quant_type?")
        absmax = tensors["absmax"]
        if spec.param("double_quant"):
            absmax = dequantize_nested_absmax(absmax, tensors["nested_absmax"], tensors["nested_quant_map"],
                                              tensors["nested_offset"], spec.param("nested_blocksize"))
        codes = unpack_nibbles_hi_first(tensors["weight"])
        return lut_block_dequantize(codes, table, absmax, spec.param("blocksize")).view(N, K)


register_format("bnb_nf4", build_bnb_nf4)
register_format("bnb_fp4", build_bnb_fp4)
register_codec("bnb", BnbCodec())
