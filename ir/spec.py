"""The format IR: frozen, slotted dataclasses of primitives, enums-as-strings and tuples.

A `FormatSpec` describes one weight-quantization format as data:

- `tensors`   : the canonical stored tensors (name, dtype, symbolic shape, role),
- `packing`   : how integer codes sit in words (bits, order, axis, straddling, layout family),
- `decode`    : how codes become values (affine, lut, vector_codebook, bitshift_trellis,
                overlapping_fields, msb_slice),
- `scales`    : the scale chain, outermost first, each level optionally quantized by a nested level,
- `transforms`: Hadamard / sign / permutation transforms on the input or output side,
- `act_quant` : static activation quantization (W4A4, W8A8),
- `params`    : the normalized options the format was built from (what `get_format` took).

Everything validates in `__post_init__` and raises `SpecError` (a `ValueError`) naming the field,
the value and what would be valid. Nothing mutates after construction. Every object has a stable
`.key` (sha256 of its sorted JSON plus the schema version).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1

DTYPES = (
    "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32",
    "float8_e4m3fn",
)
DECODE_KINDS = (
    "affine", "lut", "vector_codebook", "bitshift_trellis", "overlapping_fields", "msb_slice",
)
AXES = ("K", "N")
ORDERS = ("lsb", "msb")
GRANULARITIES = ("tensor", "row", "col", "group", "block")
SCALE_OPS = ("mul", "affine_zero", "affine_min", "lut_affine")
TRANSFORM_KINDS = ("hadamard", "signs", "permutation", "col_scale")
SIDES = ("input", "output")
PLACEMENTS = ("offline", "online")
ROLES = ("codes", "scales", "zeros", "table", "perm", "transform", "meta", "blocks")
ACT_SCALES = ("static_per_tensor",)


class SpecError(ValueError):
    """An invalid format description, option, shape or tensor."""


def _fail(obj: str, fld: str, value: Any, valid: str) -> None:
    raise SpecError(f"{obj}.{fld} = {value!r} is invalid; expected {valid}")


def _choice(obj: str, fld: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        _fail(obj, fld, value, f"one of {list(choices)}")


def _pos_int(obj: str, fld: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        _fail(obj, fld, value, "a non-negative int" if allow_zero else "a positive int")


def _freeze(value: Any) -> Any:
    """Lists become tuples, recursively, so specs stay hashable and immutable."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


class _Keyed:
    """Mixin: JSON form and the stable content key."""

    __slots__ = ()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @property
    def key(self) -> str:
        return _content_key(self)


@functools.lru_cache(maxsize=4096)
def _content_key(obj: _Keyed) -> str:
    """sha256 of the canonical JSON, cached per value (frozen, hashable): the runtime reads spec.key on
    every call, and rebuilding the JSON cost ~120 us per read."""
    payload = json.dumps({"schema": SCHEMA_VERSION, "value": obj.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TensorField(_Keyed):
    """One canonical stored tensor. `shape` holds expressions in N, K and the format's params
    (e.g. "K*bits//32"), evaluated by `FormatSpec.tensor_schema(N, K)`."""

    name: str
    dtype: str
    shape: tuple[str, ...]
    role: str
    optional: bool = False

    def __post_init__(self):
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            _fail("TensorField", "name", self.name, "a Python identifier")
        _choice(f"TensorField({self.name})", "dtype", self.dtype, DTYPES)
        _choice(f"TensorField({self.name})", "role", self.role, ROLES)
        object.__setattr__(self, "shape", _freeze(self.shape))
        if not isinstance(self.shape, tuple) or not all(isinstance(s, str) for s in self.shape):
            _fail(f"TensorField({self.name})", "shape", self.shape, "a tuple of shape expressions (str)")


@dataclass(frozen=True, slots=True)
class Packing(_Keyed):
    """How integer fields sit in storage words.

    layout names the canonical byte layout family (the codec), e.g. "gptq", "eqat", "awq",
    "gguf_block", "bnb_flat", "ccq_wint2", "qtip_tile", "vptq_index". `fields_per_word` is
    word_bits // field_bits unless fields straddle words (GPTQ 3-bit: 32 fields per 3 words)."""

    layout: str
    word_dtype: str
    field_bits: int
    order: str = "lsb"
    axis: str = "K"
    straddle: bool = False
    fields_per_word: int = 0

    def __post_init__(self):
        _choice("Packing", "word_dtype", self.word_dtype, DTYPES)
        _pos_int("Packing", "field_bits", self.field_bits)
        _choice("Packing", "order", self.order, ORDERS)
        _choice("Packing", "axis", self.axis, AXES)
        _pos_int("Packing", "fields_per_word", self.fields_per_word, allow_zero=True)
        if not self.layout:
            _fail("Packing", "layout", self.layout, "a non-empty layout family name")


@dataclass(frozen=True, slots=True)
class Decode(_Keyed):
    """How a code becomes a value.

    kind-specific data lives in `table` (LUT values, grids) and `params` (sorted (name, value)
    pairs: e.g. vector length, state bits, shifts, code function)."""

    kind: str
    bits: int
    signed: bool = False
    table: tuple[float, ...] = ()
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        _choice("Decode", "kind", self.kind, DECODE_KINDS)
        _pos_int("Decode", "bits", self.bits)
        object.__setattr__(self, "table", _freeze(self.table))
        object.__setattr__(self, "params", tuple(sorted((k, _freeze(v)) for k, v in _freeze(self.params))))
        if self.kind == "lut" and len(self.table) != 2 ** self.bits:
            _fail("Decode", "table", f"<{len(self.table)} entries>", f"2**bits = {2 ** self.bits} entries for a lut")

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


@dataclass(frozen=True, slots=True)
class ScaleLevel(_Keyed):
    """One level of the scale chain.

    granularity: tensor | row (per output channel) | col (per input column) | group (`size`
    consecutive elements along `axis`) | block (`size` consecutive elements of the flattened
    tensor, bitsandbytes-style). op: mul (w *= s), affine_zero ((q - z) * s), affine_min
    (q * s - m), lut_affine (s = table[q] * next + offset; bnb double quant).
    `quantized_by` is the next level when this level's values are themselves quantized to
    `bits` bits (bnb nested absmax, GGUF K-quant sub-scales, CCQ local x super scale)."""

    name: str
    granularity: str
    dtype: str
    op: str = "mul"
    axis: str = "K"
    size: int = 0
    bits: int = 0
    quantized_by: "ScaleLevel | None" = None

    def __post_init__(self):
        obj = f"ScaleLevel({self.name})"
        _choice(obj, "granularity", self.granularity, GRANULARITIES)
        _choice(obj, "dtype", self.dtype, DTYPES)
        _choice(obj, "op", self.op, SCALE_OPS)
        _choice(obj, "axis", self.axis, AXES)
        _pos_int(obj, "size", self.size, allow_zero=True)
        _pos_int(obj, "bits", self.bits, allow_zero=True)
        if self.granularity in ("group", "block") and self.size <= 0:
            _fail(obj, "size", self.size, f"a positive group size for granularity {self.granularity!r}")
        if self.quantized_by is not None:
            if isinstance(self.quantized_by, dict):
                object.__setattr__(self, "quantized_by", ScaleLevel.from_dict(self.quantized_by))
            if not isinstance(self.quantized_by, ScaleLevel):
                _fail(obj, "quantized_by", self.quantized_by, "a ScaleLevel or None")
            if self.bits <= 0:
                _fail(obj, "bits", self.bits, "the bit width of the stored (quantized) scale values")

    @classmethod
    def from_dict(cls, d: dict) -> "ScaleLevel":
        return cls(**d)

    def depth(self) -> int:
        return 1 + (self.quantized_by.depth() if self.quantized_by else 0)


@dataclass(frozen=True, slots=True)
class Transform(_Keyed):
    """hadamard (blocks of `size`, normalized; size 0 = the whole dimension on that side, which must
    then be a power of two), signs (a stored sign/scale vector), permutation (a stored index vector),
    col_scale (a per-input-column multiplier folded into activations)."""

    kind: str
    side: str = "input"
    placement: str = "online"
    size: int = 0
    normalized: bool = True
    tensor: str = ""

    def __post_init__(self):
        _choice("Transform", "kind", self.kind, TRANSFORM_KINDS)
        _choice("Transform", "side", self.side, SIDES)
        _choice("Transform", "placement", self.placement, PLACEMENTS)
        _pos_int("Transform", "size", self.size, allow_zero=True)
        if self.kind == "hadamard" and self.size & (self.size - 1):
            _fail("Transform", "size", self.size, "a power of two Hadamard block size, or 0 for the whole dimension")
        if self.kind in ("signs", "permutation", "col_scale") and not self.tensor:
            _fail("Transform", "tensor", self.tensor, f"the name of the stored tensor a {self.kind} transform reads")


@dataclass(frozen=True, slots=True)
class ActQuant(_Keyed):
    """Static activation quantization applied in the kernel prologue:
    x_q = clamp(round(x / s_x), qmin, qmax) (int) or x / s_x cast to fp8 (fp8)."""

    bits: int
    kind: str = "int"
    signed: bool = True
    scale: str = "static_per_tensor"
    tensor: str = "act_scale"

    def __post_init__(self):
        _choice("ActQuant", "kind", self.kind, ("int", "fp8_e4m3"))
        _choice("ActQuant", "bits", self.bits, (4, 8))
        _choice("ActQuant", "scale", self.scale, ACT_SCALES)
        if self.kind == "fp8_e4m3" and self.bits != 8:
            _fail("ActQuant", "bits", self.bits, "8 for fp8_e4m3 activations")


@dataclass(frozen=True, slots=True)
class FormatSpec(_Keyed):
    name: str
    family: str
    packing: Packing
    decode: Decode
    tensors: tuple[TensorField, ...]
    scales: tuple[ScaleLevel, ...] = ()
    transforms: tuple[Transform, ...] = ()
    act_quant: ActQuant | None = None
    params: tuple[tuple[str, Any], ...] = ()
    k_multiple: int = 1
    n_multiple: int = 1
    description: str = ""

    def __post_init__(self):
        if not self.name:
            _fail("FormatSpec", "name", self.name, "a non-empty format name")
        for fld, cls in (("packing", Packing), ("decode", Decode), ("act_quant", ActQuant)):
            v = getattr(self, fld)
            if isinstance(v, dict):
                object.__setattr__(self, fld, cls(**v))
            elif not isinstance(v, cls) and not (fld == "act_quant" and v is None):
                _fail("FormatSpec", fld, v, f"a {cls.__name__}")
        for fld, cls in (("tensors", TensorField), ("scales", ScaleLevel), ("transforms", Transform)):
            items = tuple(cls(**v) if isinstance(v, dict) else v for v in _freeze(getattr(self, fld)))
            object.__setattr__(self, fld, items)
            for v in items:
                if not isinstance(v, cls):
                    _fail("FormatSpec", fld, v, f"a tuple of {cls.__name__}")
        object.__setattr__(self, "params", tuple(sorted((k, _freeze(v)) for k, v in _freeze(self.params))))
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            _fail("FormatSpec", "tensors", names, "unique tensor names")
        for t in self.transforms:
            if t.tensor and t.tensor not in names:
                _fail("FormatSpec", "transforms", t.tensor, f"a stored tensor name, one of {names}")
        if self.act_quant is not None and self.act_quant.tensor not in names:
            _fail("FormatSpec", "act_quant.tensor", self.act_quant.tensor, f"a stored tensor name, one of {names}")
        _pos_int("FormatSpec", "k_multiple", self.k_multiple)
        _pos_int("FormatSpec", "n_multiple", self.n_multiple)
        for k, _ in self.params:
            if k in ("N", "K"):  # shape expressions evaluate params next to N and K: a param would shadow them
                _fail("FormatSpec", "params", k, "a name other than N and K (reserved for the weight's shape)")
        for rule in self.param("shape_rules", ()):
            if not (isinstance(rule, tuple) and len(rule) == 2 and all(isinstance(r, str) for r in rule)):
                _fail("FormatSpec", "shape_rules", rule, "(expression in N, K and int params, reason) pairs")

    # -- accessors -------------------------------------------------------------------------
    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def tensor(self, name: str) -> TensorField:
        for t in self.tensors:
            if t.name == name:
                return t
        raise SpecError(f"format {self.name!r} has no tensor {name!r}; it has {[t.name for t in self.tensors]}")

    # -- shapes ----------------------------------------------------------------------------
    def check_shape(self, N: int, K: int) -> None:
        """Raise SpecError unless a weight of shape (N, K) can be stored in this format."""
        for dim, v in (("N", N), ("K", K)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise SpecError(f"{self.name}: {dim} = {v!r} is invalid; expected a positive int")
        if K % self.k_multiple:
            raise SpecError(
                f"{self.name}: K = {K} (in_features) is not a multiple of {self.k_multiple} "
                f"({self._why('K')}); pad K to {-(-K // self.k_multiple) * self.k_multiple} or pick another group size")
        if N % self.n_multiple:
            raise SpecError(
                f"{self.name}: N = {N} (out_features) is not a multiple of {self.n_multiple} "
                f"({self._why('N')}); pad N to {-(-N // self.n_multiple) * self.n_multiple}")
        env = {"N": N, "K": K, **{k: v for k, v in self.params if isinstance(v, (int, bool))}}
        for expr, reason in self.param("shape_rules", ()):  # format-specific rules beyond the multiples
            if not eval(expr, {"__builtins__": {}}, env):  # noqa: S307 - expressions written by format modules
                raise SpecError(f"{self.name}: N = {N}, K = {K} breaks the rule `{expr}`: {reason}")
        for t in self.transforms:  # a whole-dimension Hadamard needs a power-of-two dimension
            if t.kind == "hadamard" and t.size == 0:
                dim, v = ("K", K) if t.side == "input" else ("N", N)
                if v & (v - 1):
                    raise SpecError(f"{self.name}: {dim} = {v} is not a power of two, which the {t.side}-side "
                                    f"Hadamard over the whole dimension needs (sizes 2^k * 12, 20, ... are not supported)")

    def _why(self, dim: str) -> str:
        return self.param(f"{dim.lower()}_multiple_reason", "the format's block/packing granularity")

    def tensor_schema(self, N: int, K: int, include_optional: bool = True) -> dict[str, tuple[tuple[int, ...], str]]:
        """{name: (shape, dtype)} of the canonical tensors for a weight of shape (N, K)."""
        self.check_shape(N, K)
        env = {"N": N, "K": K, **{k: v for k, v in self.params if isinstance(v, (int, bool))}}
        out = {}
        for t in self.tensors:
            if t.optional and not include_optional:
                continue
            try:
                shape = tuple(int(eval(expr, {"__builtins__": {}}, env)) for expr in t.shape)  # noqa: S307
            except Exception as e:  # pragma: no cover - a bug in a format definition
                raise SpecError(f"{self.name}: cannot evaluate shape {t.shape} of {t.name!r}: {e}") from e
            out[t.name] = (shape, t.dtype)
        return out

    def stored_bytes(self, N: int, K: int, tensors: dict | None = None) -> int:
        """Bytes of the canonical tensors (optional ones counted when present in `tensors`)."""
        import numpy as np
        total = 0
        for name, (shape, dtype) in self.tensor_schema(N, K).items():
            if self.tensor(name).optional and (tensors is None or name not in tensors):
                continue
            itemsize = 1 if dtype.startswith("float8") else np.dtype(dtype if dtype != "bfloat16" else "float16").itemsize
            total += int(np.prod(shape)) * itemsize
        return total

    def bits_per_weight(self, N: int = 4096, K: int = 4096) -> float:
        """Effective bits per weight, all stored tensors (codes, scales, tables) included."""
        return 8.0 * self.stored_bytes(N, K) / (N * K)

    # -- JSON ------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, text: str) -> "FormatSpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"FormatSpec JSON is malformed: {e}") from e
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> "FormatSpec":
        if not isinstance(d, dict):
            raise SpecError(f"FormatSpec JSON must be an object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"FormatSpec JSON has unknown fields {unknown}; valid fields are {sorted(known)}")
        d = dict(d)
        d["params"] = tuple((k, v) for k, v in d.get("params", ()))
        if d.get("act_quant") is not None:
            d["act_quant"] = ActQuant(**d["act_quant"])
        d["scales"] = tuple(ScaleLevel(**s) for s in d.get("scales", ()))
        d["decode"] = Decode(**{**d["decode"], "params": tuple(map(tuple, d["decode"].get("params", ())))})
        try:
            return cls(**d)
        except TypeError as e:
            raise SpecError(f"FormatSpec JSON is incomplete: {e}") from e


@dataclass(frozen=True, slots=True)
class KernelConfig(_Keyed):
    """A tile configuration (the unit the autotuner searches)."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 64
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    swap_ab: bool = False   # gemm family: compute y^T = W x^T so the decoded weights are the MMA's A operand
    maxnreg: int = 0        # Triton backend: registers per thread the compiler may use (ptx .maxnreg); 0 = its choice.
    # A lower cap trades registers for resident warps (memory-level parallelism at M=1); the TVM backend ignores it,
    # as it ignores num_stages and swap_ab. Added after configs were first stored, it is left out of to_dict()
    # (hence of the content key, the generated CONFIG and the kernel source) while it holds its default, so
    # configs, keys and tuned kernels that predate it stay equal.
    evict_first: bool = False   # Triton backend: the weight stream's loads carry eviction_policy="evict_first" (read
    # once). Under do_bench's L2 flush (dirty lines) it spares their write-back: H100 read floor 54.1 -> 49.6 us at
    # 125 MB, equal with a clean L2 (bench.flush_probe). Optional like maxnreg: left out of to_dict() and of the
    # kernel source while False.

    reg_prefetch: bool = False  # Triton gemm family, packed int formats: the next K tile's stored words, zeros and
    # scales are loaded into registers one iteration ahead (no shared-memory ring; use with num_stages 1), as the gemv
    # family's num_stages >= 2 does, with x's tile. Optional like maxnreg; not in the search space: the H100 timed the
    # version without x's prefetch at 118 us against the tuned 83 us (int4 8192x28672 M=16).

    half_dot: bool = False  # Triton gemv family at block_m 1 with fp16 x (bitsandbytes NF4 / FP4; 2- and 4-bit ints
    # packed along K): each word's products are taken two per instruction in fp16 (HFMA2 on fp16 pairs of the decoded
    # weights, scaled by a power of two that keeps every fp16 sum finite for any x), the two lanes summed in fp32;
    # bf16 x keeps fp32 products. Optional like maxnreg; not in the search space until timed on a GPU.

    _OPTIONAL = (("maxnreg", 0), ("evict_first", False), ("reg_prefetch", False), ("half_dot", False))
    # (left out of to_dict() at default)

    def __post_init__(self):
        for f in ("swap_ab", "evict_first", "reg_prefetch", "half_dot"):
            if not isinstance(getattr(self, f), bool):
                _fail("KernelConfig", f, getattr(self, f), "True or False")
        if not isinstance(self.maxnreg, int) or isinstance(self.maxnreg, bool) or not (
                self.maxnreg == 0 or (32 <= self.maxnreg <= 255 and self.maxnreg % 8 == 0)):
            _fail("KernelConfig", "maxnreg", self.maxnreg, "0 (the compiler's choice) or a multiple of 8 in [32, 255]")
        for f in ("block_m", "block_n", "block_k", "split_k", "num_warps", "num_stages"):
            _pos_int("KernelConfig", f, getattr(self, f))
        for f in ("block_m", "block_n", "block_k", "num_warps"):
            v = getattr(self, f)
            if v & (v - 1):
                _fail("KernelConfig", f, v, "a power of two")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name, default in self._OPTIONAL:
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_label(cls, label: str) -> KernelConfig:
        """The config a `label` names, e.g. m16n64k128s4w4p3t (t: swap_ab) or m1n64k128s8w2p2r128e (r: maxnreg,
        e: evict_first, f: reg_prefetch, h: half_dot)."""
        m = re.fullmatch(r"m(\d+)n(\d+)k(\d+)s(\d+)w(\d+)p(\d+)(t?)(?:r(\d+))?(e?)(f?)(h?)", label)
        if not m:
            raise SpecError(f"config label {label!r} is not like m16n64k128s4w4p3 (block_m, block_n, block_k, "
                            f"split_k, num_warps, num_stages; t suffix: swap_ab; r96 suffix: maxnreg 96; "
                            f"e suffix: evict_first; f suffix: reg_prefetch; h suffix: half_dot)")
        bm, bn, bk, sk, w, st = (int(v) for v in m.groups()[:6])
        return cls(block_m=bm, block_n=bn, block_k=bk, split_k=sk, num_warps=w, num_stages=st,
                   swap_ab=bool(m.group(7)), maxnreg=int(m.group(8) or 0), evict_first=bool(m.group(9)),
                   reg_prefetch=bool(m.group(10)), half_dot=bool(m.group(11)))

    @property
    def label(self) -> str:
        swap = "t" if self.swap_ab else ""
        reg = f"r{self.maxnreg}" if self.maxnreg else ""
        evict = "e" if self.evict_first else ""
        pre = "f" if self.reg_prefetch else ""
        half = "h" if self.half_dot else ""
        return (f"m{self.block_m}n{self.block_n}k{self.block_k}s{self.split_k}w{self.num_warps}p{self.num_stages}"
                f"{swap}{reg}{evict}{pre}{half}")


__all__ = [
    "SCHEMA_VERSION", "SpecError", "TensorField", "Packing", "Decode", "ScaleLevel", "Transform",
    "ActQuant", "FormatSpec", "KernelConfig",
]
