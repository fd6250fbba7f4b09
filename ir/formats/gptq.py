"""Group-affine int formats: GPTQ (GPTQModel v1/v2), AutoRound, AutoAWQ GEMM, EfficientQAT.

All of them decode W[o,i] = s[g,o] * (q[i,o] - z[g,o]) in fp16, with codes q and zero points z
packed into int32 words and fp16 scales per group of `group_size` input columns. They differ in
how the words hold the fields (the helpers in gptq_pack.py) and how zero points are stored.

Sources read (FORMATS.md section 8):
- ModelCloud/GPTQModel `gptqmodel/nn_modules/qlinear/__init__.py` (`dequantize_weight`, `pack_original`)
  and `utils/model.py` / the safetensor dequant helpers (v1 zero points stored minus one per field).
- intel/auto-round `export_to_autoround/qlinear_triton_gptq.py` (GPTQ packing, `zeros -= 1`).
- casper-hansen/AutoAWQ `awq/utils/packing_utils.py` (`dequantize_gemm`, AWQ_ORDER) and the GEMM packer.
- OpenGVLab/EfficientQAT `quantize/int_linear_real.py` and `quantize/triton_utils/kernels.py`.
"""
from __future__ import annotations

import math

import torch

from ..registry import register_codec, register_format
from ..spec import Decode, FormatSpec, Packing, ScaleLevel, SpecError, TensorField
from .gptq_pack import (AWQ_ORDER, affine_dequant_fp16, awq_pack_cols, awq_unpack_cols, eqat_pack_codes,
                        eqat_pack_zeros, eqat_unpack_codes, eqat_unpack_zeros, gptq_pack_codes, gptq_pack_zeros,
                        gptq_unpack_codes, gptq_unpack_zeros, group_index, minmax_scale_zero, rtn_codes)

GPTQ_BITS = (2, 3, 4, 8)
CHECKPOINTS = ("v1", "v2")
GROUPS = "K//group_size if group_size > 0 else 1"  # shape expression: number of groups along K
FORMULA = "W[o,i] = fp16(scales[g,o] * (q[i,o] - z[g,o])), g = group of input column i"
FORMULA_F32 = "W[o,i] = float32(scales[g,o]) * (q[i,o] - z[g,o]) (exact), g = group of input column i"
COMPUTE_DTYPES = ("float16", "float32")


# -- option checks ---------------------------------------------------------------------------
def _check_choice(fmt: str, option: str, value, choices: tuple) -> None:
    if isinstance(value, bool) != isinstance(choices[0], bool) or value not in choices:
        raise SpecError(f"{fmt}: option {option} = {value!r} is invalid; expected one of {list(choices)}")


def _check_group_size(fmt: str, group_size) -> None:
    ok = isinstance(group_size, int) and not isinstance(group_size, bool) and (group_size > 0 or group_size == -1)
    if not ok:
        raise SpecError(f"{fmt}: option group_size = {group_size!r} is invalid; expected a positive int "
                        f"dividing in_features (e.g. 32, 64, 128) or -1 for one group spanning all of K")


def _scale_level(group_size: int) -> ScaleLevel:
    if group_size == -1:
        return ScaleLevel(name="scales", granularity="row", dtype="float16", op="affine_zero")
    return ScaleLevel(name="scales", granularity="group", dtype="float16", op="affine_zero", axis="K",
                      size=group_size)


def _group_multiple(group_size: int) -> int:
    return group_size if group_size > 0 else 1


# -- GPTQ / AutoRound --------------------------------------------------------------------------
def _gptq_spec(name: str, bits: int, group_size: int, sym: bool, desc_act: bool, checkpoint: str,
               compute_dtype: str = "float16") -> FormatSpec:
    _check_choice(name, "bits", bits, GPTQ_BITS)
    _check_choice(name, "compute_dtype", compute_dtype, COMPUTE_DTYPES)
    _check_group_size(name, group_size)
    _check_choice(name, "sym", sym, (False, True))
    _check_choice(name, "desc_act", desc_act, (False, True))
    _check_choice(name, "checkpoint", checkpoint, CHECKPOINTS)
    straddle = bits == 3
    word_fields = 32 if straddle else 32 // bits  # fields that fill whole words
    zero_offset = 1 if checkpoint == "v1" else 0
    tensors = (
        TensorField("qweight", "int32", ("K*bits//32", "N"), "codes"),
        TensorField("qzeros", "int32", (GROUPS, "N*bits//32"), "zeros"),
        TensorField("scales", "float16", (GROUPS, "N"), "scales"),
        # g_idx is the group of each input column (a gather on scales/zeros), not a permutation of x
        TensorField("g_idx", "int32", ("K",), "meta", optional=not desc_act),
    )
    decode = Decode(kind="affine", bits=bits, signed=False, params=(
        ("compute_dtype", compute_dtype),
        ("formula", FORMULA if compute_dtype == "float16" else FORMULA_F32),
        ("group_index", "g_idx[i]" if desc_act else "i // group_size"),
        ("zero_axis", "N"),
        ("zero_offset", zero_offset),  # z = (stored field + zero_offset) mod 2**bits
        ("zero_tensor", "qzeros"),
    ))
    layout = ("a contiguous LSB-first bit stream per column, 32 fields in 3 words (fields 10 and 21 straddle)"
              if straddle else f"{word_fields} fields per int32 word, LSB first")
    return FormatSpec(
        name=name, family="gptq",
        packing=Packing(layout="gptq", word_dtype="int32", field_bits=bits, order="lsb", axis="K",
                        straddle=straddle, fields_per_word=0 if straddle else word_fields),
        decode=decode, tensors=tensors, scales=(_scale_level(group_size),),
        params=(
            ("bits", bits), ("group_size", group_size), ("sym", sym), ("desc_act", desc_act),
            ("checkpoint", checkpoint),
            ("g_idx_semantics", "g_idx[i] = the scale/zero group of input column i (GPTQ act-order); "
                                "absent means i // group_size"),
            ("k_multiple_reason", f"whole groups of {group_size if group_size > 0 else 'K'} and whole "
                                  f"int32 words of {word_fields} {bits}-bit codes along K"),
            ("n_multiple_reason", f"qzeros holds {word_fields} {bits}-bit zero points per "
                                  f"{bits if straddle else 1} int32 word{'s' if straddle else ''} along N"),
        ),
        k_multiple=math.lcm(_group_multiple(group_size), word_fields),
        n_multiple=word_fields,
        description=(f"{name}: GPTQ {bits}-bit, {'per-channel' if group_size == -1 else f'group {group_size}'}, "
                     f"{'sym' if sym else 'asym'}, desc_act={desc_act}, checkpoint {checkpoint} "
                     f"{'' if compute_dtype == 'float16' else '(dequantized exactly in float32: GGUF Q4_0 repacked) '}"
                     f"(zero points stored {'minus one' if zero_offset else 'as is'}); qweight is {layout} "
                     f"along K, qzeros the same along N"),
    )


def build_gptq(bits: int = 4, group_size: int = 128, sym: bool = False, desc_act: bool = False,
               checkpoint: str = "v1", compute_dtype: str = "float16") -> FormatSpec:
    """GPTQ / GPTQModel int2/3/4/8 groups: int32 qweight LSB-first along K, packed qzeros, fp16 scales, g_idx.

    compute_dtype "float32" dequantizes s * (q - z) exactly in float32 instead of rounding it to fp16: the layout
    GGUF Q4_0 (y = d * (q - 8), fp32) repacks into exactly (ir.convert); GPTQ checkpoints themselves are fp16."""
    return _gptq_spec("gptq", bits, group_size, sym, desc_act, checkpoint, compute_dtype)


def build_autoround(bits: int = 4, group_size: int = 128, sym: bool = True) -> FormatSpec:
    """AutoRound export: GPTQ packing with v1 zero points (stored minus one), no act-order."""
    return _gptq_spec("autoround", bits, group_size, sym, False, "v1")


def _act_order(spec: FormatSpec, K: int, calib: dict) -> torch.Tensor:
    """The order in which columns fill groups: calib `perm`, or `hessian_diag` sorted descending (GPTQ
    act-order), else identity. Only desc_act formats take an order."""
    valid = ("perm", "hessian_diag")
    unknown = sorted(set(calib) - set(valid))
    if unknown:
        raise SpecError(f"quantize({spec.name}): unknown calibration inputs {unknown}; valid: {list(valid)}")
    if not calib:
        return torch.arange(K)
    if not spec.param("desc_act"):
        raise SpecError(f"quantize({spec.name}): {sorted(calib)} needs desc_act=True (a column order is stored "
                        f"in g_idx only under act-order)")
    if len(calib) > 1:
        raise SpecError(f"quantize({spec.name}): pass one of {list(valid)}, not both")
    if "hessian_diag" in calib:
        d = calib["hessian_diag"]
        if not isinstance(d, torch.Tensor) or tuple(d.shape) != (K,) or not torch.isfinite(d).all():
            raise SpecError(f"quantize({spec.name}): hessian_diag must be a finite tensor of shape ({K},)")
        return torch.argsort(d.detach().cpu().float(), descending=True, stable=True)
    perm = calib["perm"]
    if (not isinstance(perm, torch.Tensor) or perm.dtype.is_floating_point or tuple(perm.shape) != (K,)
            or not torch.equal(perm.detach().cpu().long().sort().values, torch.arange(K))):
        raise SpecError(f"quantize({spec.name}): perm must be an integer permutation of range({K})")
    return perm.detach().cpu().long()


def _group_size(spec: FormatSpec, K: int) -> int:
    g = spec.param("group_size")
    return K if g == -1 else g


def _g_idx(spec: FormatSpec, tensors: dict, K: int) -> torch.Tensor:
    """The group of each input column, checked: any in-range g_idx under desc_act; i // group_size otherwise."""
    g = _group_size(spec, K)
    default = torch.arange(K) // g
    if "g_idx" not in tensors:
        return default
    g_idx = tensors["g_idx"].long()
    if spec.param("desc_act"):
        if int(g_idx.min()) < 0 or int(g_idx.max()) >= K // g:
            raise SpecError(f"{spec.name}: g_idx values must lie in [0, {K // g}) (the number of groups)")
    elif not torch.equal(g_idx, default):
        raise SpecError(f"{spec.name}: g_idx differs from i // group_size; use desc_act=True for an act-order g_idx")
    return g_idx


class GptqCodec:
    """GPTQModel layout: qweight [K*bits/32, N], qzeros [K/g, N*bits/32], scales [K/g, N], g_idx [K]."""

    def quantize(self, spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
        bits, sym = spec.param("bits"), spec.param("sym")
        N, K = W.shape
        g = _group_size(spec, K)
        perm = _act_order(spec, K, calib)
        g_idx = group_index(perm, g)
        Wt = W.t()  # [K, N], the origin's orientation
        s16, zero = minmax_scale_zero(Wt[perm].reshape(K // g, g, N).transpose(1, 2), bits, sym)  # [G, N]
        codes = rtn_codes(Wt, s16[g_idx], zero[g_idx], bits)
        out = {
            "qweight": gptq_pack_codes(codes, bits),
            "qzeros": gptq_pack_zeros(zero, bits, spec.decode.param("zero_offset")),
            "scales": s16,
        }
        if spec.param("desc_act"):
            out["g_idx"] = g_idx.to(torch.int32)
        return out

    def synthetic(self, spec: FormatSpec, N: int, K: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Random words and scales; under desc_act an act-order g_idx (column perm[j] in group j // g)."""
        from ..synthetic import random_by_role
        out = random_by_role(spec, N, K, gen)
        if spec.param("desc_act"):
            perm = torch.randperm(K, generator=gen)
            out["g_idx"] = group_index(perm, _group_size(spec, K)).to(torch.int32)
        return out

    def dequantize(self, spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
        bits = spec.param("bits")
        g_idx = _g_idx(spec, tensors, K)
        q = gptq_unpack_codes(tensors["qweight"], bits, K)
        z = gptq_unpack_zeros(tensors["qzeros"], bits, N, spec.decode.param("zero_offset"))
        if spec.decode.param("compute_dtype") == "float32":   # exact: 11-bit scale times a code difference <= 255
            return (tensors["scales"][g_idx].float() * (q - z[g_idx]).float()).t().contiguous()
        return affine_dequant_fp16(q, z[g_idx], tensors["scales"][g_idx]).float().t().contiguous()


# -- AutoAWQ GEMM ------------------------------------------------------------------------------
def _grouped_affine_decode(bits: int, *extra: tuple) -> Decode:
    """W = fp16(q - z) * s with i // group_size groups and zero points stored as is (AWQ, EfficientQAT)."""
    return Decode(kind="affine", bits=bits, signed=False, params=(
        ("compute_dtype", "float16"), ("formula", FORMULA), ("group_index", "i // group_size"),
        ("zero_axis", "N"), ("zero_offset", 0), ("zero_tensor", "qzeros"), *extra))


def build_awq(bits: int = 4, group_size: int = 128) -> FormatSpec:
    """AutoAWQ GEMM int4: qweight [K, N/8] packed along N in AWQ nibble order, qzeros likewise, fp16 scales."""
    _check_choice("awq", "bits", bits, (4,))
    _check_group_size("awq", group_size)
    return FormatSpec(
        name="awq", family="awq",
        packing=Packing(layout="awq", word_dtype="int32", field_bits=4, order="lsb", axis="N", fields_per_word=8),
        # nibble i of word j holds column 8*j + field_order[i] (qweight and qzeros)
        decode=_grouped_affine_decode(4, ("field_order", AWQ_ORDER)),
        tensors=(
            TensorField("qweight", "int32", ("K", "N//8"), "codes"),
            TensorField("qzeros", "int32", (GROUPS, "N//8"), "zeros"),
            TensorField("scales", "float16", (GROUPS, "N"), "scales"),
        ),
        scales=(_scale_level(group_size),),
        params=(
            ("bits", bits), ("group_size", group_size), ("sym", False), ("field_order", AWQ_ORDER),
            ("k_multiple_reason", f"whole groups of {group_size if group_size > 0 else 'K'} along K"),
            ("n_multiple_reason", "8 int4 codes per int32 word along N"),
        ),
        k_multiple=_group_multiple(group_size), n_multiple=8,
        description=f"AutoAWQ GEMM int4, group {group_size}, asym, W = (q - z) * s in fp16; fields packed along "
                    f"N in the interleaved order {list(AWQ_ORDER)}",
    )


class AwqCodec:
    """AutoAWQ GEMM layout: qweight [K, N/8], qzeros [K/g, N/8], scales [K/g, N]."""

    def quantize(self, spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
        if calib:
            raise SpecError(f"quantize({spec.name}): unknown calibration inputs {sorted(calib)}; it takes none")
        N, K = W.shape
        g = _group_size(spec, K)
        Wt = W.t()
        s16, zero = minmax_scale_zero(Wt.reshape(K // g, g, N).transpose(1, 2), 4, sym=False)
        g_idx = torch.arange(K) // g
        codes = rtn_codes(Wt, s16[g_idx], zero[g_idx], 4)
        return {"qweight": awq_pack_cols(codes), "qzeros": awq_pack_cols(zero), "scales": s16}

    def dequantize(self, spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
        g_idx = torch.arange(K) // _group_size(spec, K)
        q = awq_unpack_cols(tensors["qweight"], N)
        z = awq_unpack_cols(tensors["qzeros"], N)
        return affine_dequant_fp16(q, z[g_idx], tensors["scales"][g_idx]).float().t().contiguous()


# -- EfficientQAT ------------------------------------------------------------------------------
def _eqat_spec(name: str, bits: int, group_size: int) -> FormatSpec:
    _check_choice(name, "bits", bits, GPTQ_BITS)
    _check_group_size(name, group_size)
    per = 32 // bits
    return FormatSpec(
        name=name, family="eqat",
        packing=Packing(layout="eqat", word_dtype="int32", field_bits=bits, order="lsb", axis="K",
                        fields_per_word=per),
        decode=_grouped_affine_decode(bits),
        tensors=(
            TensorField("qweight", "int32", ("-(-K//(32//bits))", "N"), "codes"),
            TensorField("qzeros", "int32", (GROUPS, "-(-N//(32//bits))"), "zeros"),
            TensorField("scales", "float16", (GROUPS, "N"), "scales"),
            # EfficientQAT saves g_idx = i // group_size "for consistency with GPTQ models" and never reads it.
            TensorField("g_idx", "int32", ("K",), "meta", optional=True),
        ),
        scales=(_scale_level(group_size),),
        params=(
            ("bits", bits), ("group_size", group_size), ("sym", False),
            ("k_multiple_reason", f"whole groups of {group_size if group_size > 0 else 'K'} along K "
                                  f"(the last qweight word may be partly empty)"),
        ),
        k_multiple=_group_multiple(group_size), n_multiple=1,
        description=f"EfficientQAT native {bits}-bit, group {group_size}, asym, zero points stored as is; "
                    f"{per} fields per int32 word LSB-first (never straddling), along K for qweight and N for qzeros",
    )


def build_eqat(bits: int = 4, group_size: int = 128) -> FormatSpec:
    """EfficientQAT native layout: 32//bits codes per int32 word (3-bit: 10 per word), zero points not offset."""
    return _eqat_spec("eqat", bits, group_size)


class EqatCodec:
    """EfficientQAT layout: qweight [ceil(K/(32//bits)), N], qzeros [K/g, ceil(N/(32//bits))], scales [K/g, N]."""

    def quantize(self, spec: FormatSpec, W: torch.Tensor, **calib) -> dict[str, torch.Tensor]:
        if calib:
            raise SpecError(f"quantize({spec.name}): unknown calibration inputs {sorted(calib)}; it takes none")
        bits = spec.param("bits")
        N, K = W.shape
        g = _group_size(spec, K)
        Wt = W.t()
        s16, zero = minmax_scale_zero(Wt.reshape(K // g, g, N).transpose(1, 2), bits, sym=False)
        g_idx = torch.arange(K) // g
        codes = rtn_codes(Wt, s16[g_idx], zero[g_idx], bits)
        return {"qweight": eqat_pack_codes(codes, bits), "qzeros": eqat_pack_zeros(zero, bits), "scales": s16}

    def dequantize(self, spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
        bits = spec.param("bits")
        g_idx = torch.arange(K) // _group_size(spec, K)  # the origin ignores a stored g_idx
        q = eqat_unpack_codes(tensors["qweight"], bits, K)
        z = eqat_unpack_zeros(tensors["qzeros"], bits, N)
        return affine_dequant_fp16(q, z[g_idx], tensors["scales"][g_idx]).float().t().contiguous()


# -- named presets: the group-int configurations EfficientQAT and AutoRound release ---------------
def _preset(name: str, summary: str, make):
    def builder() -> FormatSpec:
        return make(name)
    builder.__name__ = f"build_{name}"
    builder.__doc__ = summary
    return builder


PRESETS = {
    "int4_g128_asym": ("int4, group 128, asym: gptq checkpoint v2 (GPTQModel gptq_v2).",
                       lambda n: _gptq_spec(n, 4, 128, False, False, "v2")),
    "int4_g128_sym": ("int4, group 128, sym: gptq checkpoint v2.",
                      lambda n: _gptq_spec(n, 4, 128, True, False, "v2")),
    "int4_g32_sym_f32": ("int4, group 32, sym, float32 dequant: gptq checkpoint v2; GGUF Q4_0 repacks into it exactly.",
                         lambda n: _gptq_spec(n, 4, 32, True, False, "v2", "float32")),
    "int8_g32_sym_f32": ("int8, group 32, sym, float32 dequant: gptq checkpoint v2; GGUF Q8_0 repacks into it exactly.",
                         lambda n: _gptq_spec(n, 8, 32, True, False, "v2", "float32")),
    "int3_g128_asym": ("int3, group 128, asym: gptq checkpoint v2 (3-bit fields straddle words).",
                       lambda n: _gptq_spec(n, 3, 128, False, False, "v2")),
    "int2_g64_asym": ("int2, group 64, asym: gptq checkpoint v2.",
                      lambda n: _gptq_spec(n, 2, 64, False, False, "v2")),
    "int2_g128_asym": ("int2, group 128, asym: gptq checkpoint v2.",
                       lambda n: _gptq_spec(n, 2, 128, False, False, "v2")),
    "eqat_w2g64": ("EfficientQAT released config w2g64 (native layout).", lambda n: _eqat_spec(n, 2, 64)),
    "eqat_w2g128": ("EfficientQAT released config w2g128 (native layout).", lambda n: _eqat_spec(n, 2, 128)),
    "eqat_w3g128": ("EfficientQAT released config w3g128 (native layout, 10 codes per word).",
                    lambda n: _eqat_spec(n, 3, 128)),
    "eqat_w4g128": ("EfficientQAT released config w4g128 (native layout).", lambda n: _eqat_spec(n, 4, 128)),
}

register_format("gptq", build_gptq)
register_format("autoround", build_autoround)
register_format("awq", build_awq)
register_format("eqat", build_eqat)
for _name, (_summary, _make) in PRESETS.items():
    register_format(_name, _preset(_name, _summary, _make))
register_codec("gptq", GptqCodec())
register_codec("awq", AwqCodec())
register_codec("eqat", EqatCodec())
