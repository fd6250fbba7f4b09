"""Exact layout conversions between formats that store the same numbers.

Some checkpoint layouts hold exactly what another format holds, only packed differently: AutoAWQ GEMM int4 (codes
and zero points packed along N in an interleaved nibble order) carries the same integer codes, zero points and fp16
scales as a GPTQ v2 int4 checkpoint (codes packed along K, zero points as stored), and both dequantize as
fp16(s * (q - z)); GGUF Q4_0 blocks hold int4 codes of 32-weight groups with a zero point of 8 and an fp16 scale,
which GPTQ v2 int4 group 32 holds too (dequantized in float32, as Q4_0 is), and Q8_0's int8 codes are GPTQ v2 int8
group 32 codes less their zero point 128. Repacking such a weight once, at load time, lets it run on the other format's kernels; the
dequantized weight is bit-for-bit the same (tests/test_convert.py checks it for every converter).

    convert(qt, "int4_g128_asym")   # a QuantizedTensor in the target format, same dequantized weight
    repack_target(spec)             # the format a weight of `spec` is best run as, or None"""
from __future__ import annotations

from typing import Callable

import torch

from .registry import get_format
from .spec import FormatSpec, SpecError
from .tensor import QuantizedTensor

# (source family, target family) -> function(source tensors, N, K) -> target tensors
_CONVERTERS: dict[tuple[str, str], Callable[[dict[str, torch.Tensor], int, int, FormatSpec],
                                            dict[str, torch.Tensor]]] = {}


def _awq_to_gptq_v2(t: dict[str, torch.Tensor], N: int, K: int, src: FormatSpec) -> dict[str, torch.Tensor]:
    from .formats.gptq_pack import awq_unpack_cols, gptq_pack_codes, gptq_pack_zeros
    codes = awq_unpack_cols(t["qweight"], N)            # [K, N], logical column order
    zeros = awq_unpack_cols(t["qzeros"], N)             # [groups, N]
    return {"qweight": gptq_pack_codes(codes, 4).to(torch.int32),
            "qzeros": gptq_pack_zeros(zeros, 4, 0).to(torch.int32),
            "scales": t["scales"].clone()}


_CONVERTERS[("awq", "gptq")] = _awq_to_gptq_v2


def _gguf_to_gptq(t: dict[str, torch.Tensor], N: int, K: int, src: FormatSpec) -> dict[str, torch.Tensor]:
    """GGUF Q4_0 blocks {fp16 d; 16 bytes, element j in the low nibble of byte j and j + 16 in the high one} or Q8_0
    blocks {fp16 d; int8 qs[32]} -> GPTQ v2 int4 / int8 group 32: the codes (Q8_0's plus 128) packed along K, zero
    points 8 / 128, scales d (d * (q - zero) is Q4_0's and Q8_0's float32 dequant exactly)."""
    from .formats.gguf import read_f16, unpack_codes
    from .formats.gptq_pack import gptq_pack_codes, gptq_pack_zeros
    bits = src.decode.bits
    b = t["blocks"].reshape(N, K // 32, src.param("type_size"))
    if bits == 4:
        codes = unpack_codes(b[:, :, 2:].reshape(-1, 16), 4, 16).reshape(N, K)  # ggml's element order (plane 16)
    else:
        codes = b[:, :, 2:].contiguous().view(torch.int8).to(torch.int64).reshape(N, K) + 128
    d = read_f16(b[:, :, :2].reshape(-1, 2)).reshape(N, K // 32)               # fp16 values as float32
    zero = 1 << (bits - 1)
    return {"qweight": gptq_pack_codes(codes.t().contiguous(), bits).to(torch.int32),
            "qzeros": gptq_pack_zeros(torch.full((K // 32, N), zero, dtype=torch.int64), bits, 0).to(torch.int32),
            "scales": d.t().contiguous().to(torch.float16)}


_CONVERTERS[("gguf", "gptq")] = _gguf_to_gptq


def _compatible(src: FormatSpec, dst: FormatSpec) -> str | None:
    """Why `src` cannot be converted to `dst` exactly, or None when it can."""
    if (src.family, dst.family) not in _CONVERTERS:
        known = ", ".join(f"{a} -> {b}" for a, b in _CONVERTERS)
        return f"no exact conversion from the {src.family} family to the {dst.family} family (known: {known})"
    if (src.family, dst.family) == ("gguf", "gptq"):
        bits = {"gguf_q4_0": 4, "gguf_q8_0": 8}.get(src.name)
        if bits is None:
            return f"only GGUF Q4_0 and Q8_0 have an exact GPTQ layout ({src.name} has other block fields)"
        want = {"bits": bits, "group_size": 32, "desc_act": False, "checkpoint": "v2"}
        got = {k: dst.param(k) for k in want}
        kind = src.name[5:].upper()
        if got != want or dst.decode.param("compute_dtype") != "float32":
            return (f"{dst.name} must be a gptq-family format with {want} and compute_dtype 'float32' ({kind} "
                    f"dequantizes in float32) to hold a {kind} weight exactly, but has {got} and compute_dtype "
                    f"{dst.decode.param('compute_dtype')!r}")
    if (src.family, dst.family) == ("awq", "gptq"):
        want = {"bits": src.param("bits"), "group_size": src.param("group_size"), "sym": False, "desc_act": False,
                "checkpoint": "v2"}
        got = {k: dst.param(k) for k in want}
        if got != want:
            return (f"{dst.name} must be a gptq-family format with {want} to hold an {src.name} weight exactly, "
                    f"but has {got}")
    return None


def convert(qt: QuantizedTensor, target: FormatSpec | str) -> QuantizedTensor:
    """`qt` repacked into `target` (a spec or a registered name); raises SpecError when the two formats do not
    store the same numbers (the message says which parameters differ or which conversions exist)."""
    dst = get_format(target) if isinstance(target, str) else target
    why = _compatible(qt.spec, dst)
    if why:
        raise SpecError(f"cannot convert {qt.spec.name} to {dst.name}: {why}")
    N, K = qt.shape
    dst.check_shape(N, K)
    device = next(iter(qt.tensors.values())).device
    cpu = {k: v.cpu() for k, v in qt.tensors.items()}
    out = _CONVERTERS[(qt.spec.family, dst.family)](cpu, N, K, qt.spec)
    return QuantizedTensor(dst, (N, K), {k: v.to(device) for k, v in out.items()})


def repack_target(spec: FormatSpec) -> FormatSpec | None:
    """The format whose kernels a weight stored as `spec` should run on, or None to keep it. AutoAWQ int4 goes to
    GPTQ v2 with the same group size (int4_g128_asym for group 128, the preset the tuning databases cover): on the
    H100 its kernels are 1.14-2.58x faster than AWQ's in all 72 (shape, M bucket) cases both have tuned
    entries for (autotune/db, session 6)."""
    if spec.name == "gguf_q4_0":   # GPTQ v2 int4 group 32, fp32 dequant: the int4 kernels (half_dot at M=1)
        return get_format("int4_g32_sym_f32")
    if spec.name == "gguf_q8_0":
        # GPTQ v2 int8 group 32, fp32 dequant: 16-byte word loads where Q8_0's 34-byte blocks allow only 2-byte ones,
        # the 8-bit half_dot gemv and the 8-bit gemm pair decode. H100, same runs (shards s41, s43), 8192x28672 /
        # 28672x8192 / 4096x4096: M=1 150.1 / 150.3 / 21.8 -> 102.9 / 104.6 / 18.5 us; M=16 189.6 / 183.9 / 24.7 ->
        # 114.8 / 111.9 / 20.0; M=128 333.9 / 369.4 / 41.4 -> 262.1 / 212.8 / 33.0. repack=False keeps Q8_0's kernels.
        return get_format("int8_g32_sym_f32")
    if spec.family == "awq" and spec.param("bits") == 4:
        g = spec.param("group_size")
        dst = get_format("int4_g128_asym") if g == 128 else get_format("gptq", checkpoint="v2", group_size=g,
                                                                          sym=False)
        return dst if _compatible(spec, dst) is None else None
    return None
