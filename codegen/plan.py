"""Lowering: (FormatSpec, problem shape, KernelConfig, arch) -> KernelPlan, plain data for templates.

The plan says which tensors the kernel loads (all canonical tensors of the spec, in spec order,
as `<name>_ptr` arguments), the compile-time constants (the spec's integer/bool params), the
decode macro file (one per format family), the transforms applied to x before and to y after
the matmul, the activation quantization prologue and the epilogue (activation scale x row scale,
bias). Templates choose and wire; they never compute format facts themselves.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ir import FormatSpec, KernelConfig, SpecError

from . import __version__
from .arch import check_arch_support, get_arch, kernel_family

X_DTYPES = ("float16", "bfloat16")


@dataclass(frozen=True, slots=True)
class TensorArg:
    name: str
    dtype: str
    role: str
    optional: bool


@dataclass(frozen=True, slots=True)
class KernelPlan:
    name: str
    format: str
    spec_key: str
    spec_json: str
    family: str                 # gemv | gemm
    decode_template: str        # templates/triton/decode/<format family>.jinja
    tensors: tuple[TensorArg, ...]
    constexprs: tuple[tuple[str, int], ...]
    input_transforms: tuple[dict, ...]
    output_transforms: tuple[dict, ...]
    act_quant: dict | None      # {"bits", "kind", "tensor", "qmin", "qmax"}
    row_scale: str              # tensor applied per output column in the epilogue ("" = none)
    config: KernelConfig
    arch: str
    generator: str
    spec_params: dict           # int/bool params, for evaluating shape expressions in the entry point
    schema_exprs: dict          # {tensor: (shape expressions, dtype)}
    optional_names: tuple[str, ...]
    params: dict                # every spec param (strings too), for render-time choices in decode macros
    decode: dict                # the spec's Decode: kind, bits, signed, table, params (as a dict)
    packing: dict               # the spec's Packing (layout, word dtype, field bits, order, axis, straddle)

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)


def _slug(s: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").lower()


def _param_tag(spec: FormatSpec) -> str:
    short = {"bits": "b", "group_size": "g", "blocksize": "b", "sym": "sym", "desc_act": "act"}
    parts = []
    for k, v in spec.params:
        if k in short and not isinstance(v, bool):
            parts.append(f"{short[k]}{v if v != -1 else 'K'}")
        elif k in short and v:
            parts.append(short[k])
    return "_".join(parts)


def kernel_name(spec: FormatSpec, family: str, config: KernelConfig, arch: str) -> str:
    """Procedural name: symbol, file stem and log label. The spec key prefix disambiguates options."""
    tag = _param_tag(spec)
    return _slug(f"{spec.name}_{tag}_{spec.key[:8]}_{arch}_{family}_{config.label}")


def _constexprs(spec: FormatSpec) -> tuple[tuple[str, int], ...]:
    out = []
    for k, v in spec.params:
        if isinstance(v, bool):
            out.append((k.upper(), int(v)))
        elif isinstance(v, int):
            out.append((k.upper(), v))
    return tuple(out)


def _act_quant(spec: FormatSpec, arch) -> dict | None:
    aq = spec.act_quant
    if aq is None:
        return None
    if aq.kind == "int":
        qmax = 2 ** (aq.bits - 1) - 1 if aq.signed else 2 ** aq.bits - 1
        qmin = -(2 ** (aq.bits - 1)) if aq.signed else 0
    else:
        qmin, qmax = -448, 448
    return {"bits": aq.bits, "kind": aq.kind, "tensor": aq.tensor, "qmin": qmin, "qmax": qmax,
            "fp8_dot": aq.kind == "fp8_e4m3" and arch.fp8}


def _row_scale(spec: FormatSpec) -> str:
    if spec.act_quant is None:
        return ""
    names = {t.name for t in spec.tensors}
    for s in spec.scales:
        if s.granularity == "row" and s.name in names:
            return s.name
    raise SpecError(f"format {spec.name!r} quantizes activations but has no stored per-row (granularity 'row') "
                    f"weight scale tensor for the epilogue")


def lower(spec: FormatSpec, M: int, N: int, K: int, config: KernelConfig, arch: str,
          family: str | None = None) -> KernelPlan:
    """Build the plan for one kernel. Illegal combinations are refused here, at build time."""
    a = get_arch(arch)
    check_arch_support(spec, a)
    spec.check_shape(N, K)
    # a config names its family: gemm tiles (tl.dot) have block_m >= 16, gemv ones <= 4 (the runtime may run bucket
    # 8's gemm config for M <= 4, where the tuning database timed it faster: runtime.tuning.lookup_config)
    family = family or ("gemm" if config.block_m >= 16 else kernel_family(M))
    if family not in ("gemv", "gemm"):
        raise SpecError(f"kernel family {family!r} is invalid; expected 'gemv' or 'gemm'")
    if family == "gemm" and (config.block_m < 16 or config.block_n < 16 or config.block_k < 16):
        raise SpecError(f"config {config.label}: the gemm family uses tl.dot, which needs block_m, block_n, "
                        f"block_k >= 16")
    if config.swap_ab and (family != "gemm" or spec.act_quant is not None):
        raise SpecError(f"config {config.label}: swap_ab applies to the gemm family of weight-only formats")
    if config.reg_prefetch and (family != "gemm" or spec.act_quant is not None):
        raise SpecError(f"config {config.label}: reg_prefetch applies to the gemm family of weight-only formats "
                        f"(the gemv family prefetches with num_stages >= 2)")
    if config.half_dot and (family != "gemv" or config.block_m != 1 or spec.act_quant is not None):
        raise SpecError(f"config {config.label}: half_dot applies to the gemv family at block_m 1 (weight-only "
                        f"formats with fp16 pair products: bnb NF4 / FP4, 2- and 4-bit packed ints)")
    if config.split_k > 1 and K < config.split_k * config.block_k:
        raise SpecError(f"config {config.label}: split_k={config.split_k} x block_k={config.block_k} exceeds K={K}")
    tr_in = tuple(t.to_dict() for t in spec.transforms if t.side == "input" and t.placement == "online")
    tr_out = tuple(t.to_dict() for t in spec.transforms if t.side == "output" and t.placement == "online")
    return KernelPlan(
        name=kernel_name(spec, family, config, arch),
        format=spec.name,
        spec_key=spec.key,
        spec_json=spec.to_json(),
        family=family,
        decode_template=f"triton/decode/{spec.family}.jinja",
        tensors=tuple(TensorArg(t.name, t.dtype, t.role, t.optional) for t in spec.tensors),
        constexprs=_constexprs(spec),
        input_transforms=tr_in,
        output_transforms=tr_out,
        act_quant=_act_quant(spec, a),
        row_scale=_row_scale(spec),
        config=config,
        arch=arch,
        generator=f"quantcc {__version__}",
        spec_params={k: v for k, v in spec.params if isinstance(v, (int, bool))},
        schema_exprs={t.name: (t.shape, t.dtype) for t in spec.tensors},
        optional_names=tuple(t.name for t in spec.tensors if t.optional),
        params=dict(spec.params),
        decode={"kind": spec.decode.kind, "bits": spec.decode.bits, "signed": spec.decode.signed,
                "table": spec.decode.table, "params": dict(spec.decode.params)},
        packing=spec.packing.to_dict(),
    )
