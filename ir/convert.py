"""Exact layout conversions between formats that store the same numbers.

Some checkpoint layouts hold exactly what another format holds, only packed differently: AutoAWQ GEMM int4 (codes
and zero points packed along N in an interleaved nibble order) carries the same integer codes, zero points and fp16
scales as a GPTQ v2 int4 checkpoint (codes packed along K, zero points as stored), and both dequantize as
fp16(s * (q - z)). Repacking such a weight once, at load time, lets it run on the other format's kernels; the
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
_CONVERTERS: dict[tuple[str, str], Callable[[dict[str, torch.Tensor], int, int], dict[str, torch.Tensor]]] = {}


def _awq_to_gptq_v2(t: dict[str, torch.Tensor], N: int, K: int) -> dict[str, torch.Tensor]:
    from .formats.gptq_pack import awq_unpack_cols, gptq_pack_codes, gptq_pack_zeros
    codes = awq_unpack_cols(t["qweight"], N)            # [K, N], logical column order
    zeros = awq_unpack_cols(t["qzeros"], N)             # [groups, N]
    return {"qweight": gptq_pack_codes(codes, 4).to(torch.int32),
            "qzeros": gptq_pack_zeros(zeros, 4, 0).to(torch.int32),
            "scales": t["scales"].clone()}


_CONVERTERS[("awq", "gptq")] = _awq_to_gptq_v2


def _compatible(src: FormatSpec, dst: FormatSpec) -> str | None:
    """Why `src` cannot be converted to `dst` exactly, or None when it can."""
    if (src.family, dst.family) not in _CONVERTERS:
        known = ", ".join(f"{a} -> {b}" for a, b in _CONVERTERS)
        return f"no exact conversion from the {src.family} family to the {dst.family} family (known: {known})"
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
    device = next(iter(qt.tensors.values())).device
    cpu = {k: v.cpu() for k, v in qt.tensors.items()}
    out = _CONVERTERS[(qt.spec.family, dst.family)](cpu, N, K)
    return QuantizedTensor(dst, (N, K), {k: v.to(device) for k, v in out.items()})


def repack_target(spec: FormatSpec) -> FormatSpec | None:
    """The format whose kernels a weight stored as `spec` should run on, or None to keep it. AutoAWQ int4 goes to
    GPTQ v2 with the same group size (int4_g128_asym for group 128, the preset the tuning databases cover): on the
    H100 its kernels are 1.14-2.58x faster than AWQ's in all 72 (shape, M bucket) cases both have tuned
    entries for (autotune/db, session 6)."""
    if spec.family == "awq" and spec.param("bits") == 4:
        g = spec.param("group_size")
        dst = get_format("int4_g128_asym") if g == 128 else get_format("gptq", checkpoint="v2", group_size=g,
                                                                          sym=False)
        return dst if _compatible(spec, dst) is None else None
    return None
