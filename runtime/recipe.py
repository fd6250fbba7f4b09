"""Recipes: which nn.Linear layers of a model become which format, and `quantize_model` that applies one.

A recipe is an ordered list of (module-name glob, target) rules plus a default; the first rule whose glob
matches a layer's full module name (fnmatch, so `*` crosses dots: "*.mlp.down_proj") decides. A target is
a format name ("gptq"), a (format name, options dict) pair (("gptq", {"bits": 3})), or "skip" (the layer stays
in 16-bit). Layers whose shape or dtype the format cannot take are refused with the layer name and the
reason (on_error="raise", the default) or left in 16-bit and reported (on_error="skip").
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

from torch import nn

import ir
from ir import FormatSpec, SpecError
from ir.tensor import WEIGHT_DTYPES

from .linear import QuantLinear

SKIP = "skip"
ON_ERROR = ("raise", "skip")
Target = Union[str, tuple]


def _normalize(target: Any, where: str) -> tuple[str, dict] | None:
    """(format name, options) or None for skip; validates by building the spec once."""
    if target == SKIP:
        return None
    if isinstance(target, str):
        name, options = target, {}
    elif isinstance(target, (tuple, list)) and len(target) == 2 and isinstance(target[0], str) \
            and isinstance(target[1], Mapping):
        name, options = target[0], dict(target[1])
    else:
        raise SpecError(f"recipe {where}: target {target!r} is invalid; expected a format name, "
                        f"(format name, options dict) or {SKIP!r}")
    try:
        ir.get_format(name, **options)
    except SpecError as e:
        raise SpecError(f"recipe {where}: {e}") from e
    return name, options


def _label(name: str, options: dict) -> str:
    if not options:
        return name
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in sorted(options.items()))})"


@dataclass(frozen=True)
class Recipe:
    """Ordered (glob, target) rules, a default target for layers no rule matches, and what to do with a layer
    the chosen format cannot take (on_error 'raise' or 'skip')."""

    rules: tuple[tuple[str, Target], ...] = ()
    default: Target = SKIP
    on_error: str = "raise"
    description: str = ""
    _resolved: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        rules = tuple((g, t) for g, t in (self.rules.items() if isinstance(self.rules, Mapping) else self.rules))
        for glob, _ in rules:
            if not isinstance(glob, str) or not glob:
                raise SpecError(f"recipe: rule glob {glob!r} is invalid; expected a non-empty module-name glob")
        if self.on_error not in ON_ERROR:
            raise SpecError(f"recipe: on_error = {self.on_error!r} is invalid; expected one of {list(ON_ERROR)}")
        object.__setattr__(self, "rules", rules)
        resolved = tuple((g, _normalize(t, f"rule {g!r}")) for g, t in rules)
        object.__setattr__(self, "_resolved", resolved + (("", _normalize(self.default, "default")),))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Target], default: Target = SKIP, on_error: str = "raise") -> "Recipe":
        return cls(tuple(mapping.items()), default, on_error)

    def target_for(self, name: str) -> tuple[str, tuple[str, dict] | None]:
        """(the matching glob, or '' for the default; (format, options) or None for skip)."""
        for glob, target in self._resolved[:-1]:
            if fnmatch.fnmatchcase(name, glob):
                return glob, target
        return self._resolved[-1]


DEFAULT_SENSITIVE = ("*.mlp.down_proj",)


def unsloth_dynamic_4bit(sensitive: tuple[str, ...] = DEFAULT_SENSITIVE, fmt: str = "bnb_nf4",
                         options: Mapping[str, Any] | None = None,
                         keep: tuple[str, ...] = ("lm_head", "*embed*")) -> Recipe:
    """Unsloth's "dynamic 4-bit" style: NF4 (bitsandbytes, blocksize 64, double quant) everywhere except
    layers known to be sensitive to quantization, which stay in 16-bit.

    `keep` (the output head and anything named like an embedding) and `sensitive` (module-name globs; the
    default keeps every MLP down projection, the layers whose inputs carry the largest activation outliers)
    are skipped. Unsloth picks the sensitive set per model by measuring activation and weight quantization
    error; its released checkpoints list them in `quantization_config.llm_int8_skip_modules`: pass those
    names as globs (e.g. "*.layers.1.mlp.down_proj") to reproduce one. Layers NF4 cannot take (in_features
    not a multiple of the blocksize) stay in 16-bit too (on_error='skip')."""
    rules = [(g, SKIP) for g in (*keep, *sensitive)]
    return Recipe(tuple(rules), default=(fmt, dict(options or {})), on_error="skip",
                  description=f"unsloth-dynamic-4bit: {fmt} except {list(keep) + list(sensitive)}")


@dataclass
class QuantizeReport:
    """replaced: module name -> format label; skipped: module name -> reason."""

    replaced: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"quantized {len(self.replaced)} layer(s), kept {len(self.skipped)} in 16-bit"]
        lines += [f"  {n}: {f}" for n, f in self.replaced.items()]
        lines += [f"  {n}: kept ({r})" for n, r in self.skipped.items()]
        return "\n".join(lines)


def _tied_to(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every qualified name it appears under (a tied weight has several)."""
    names: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    return names


def _check(name: str, linear: nn.Linear, spec: FormatSpec, tied: dict[int, list[str]]) -> None:
    """Raise SpecError naming the layer for what would make quantizing it fail or surprise."""
    W = linear.weight
    others = [n for n in tied.get(id(W), []) if n != f"{name}.weight"]
    if others:
        raise SpecError(f"layer {name}: its weight is tied to {others}; quantizing it would untie them "
                        f"(skip it in the recipe)")
    if W.device.type == "meta":
        raise SpecError(f"layer {name}: its weight is on the meta device; load real weights first")
    if W.dtype not in WEIGHT_DTYPES:
        raise SpecError(f"layer {name}: weight dtype {W.dtype} is not one of {list(WEIGHT_DTYPES)}")
    try:
        spec.check_shape(linear.out_features, linear.in_features)
    except SpecError as e:
        raise SpecError(f"layer {name}: {e}") from e


def quantize_model(model: nn.Module, recipe: Recipe | Mapping[str, Target], *, default: Target | None = None,
                   on_error: str | None = None, calib: Mapping[str, Mapping[str, Any]] | None = None,
                   verbose: bool = False) -> QuantizeReport:
    """Replace the model's nn.Linear layers by QuantLinear in place, as `recipe` says; returns the report.

    `recipe` is a Recipe or a plain ordered mapping glob -> target (then `default`, else 'skip', applies to
    unmatched layers and `on_error`, else 'raise', to layers a format cannot take). `calib` maps module names
    to calibration inputs for the format's encoder. Every layer is checked before any is replaced, so a
    refused layer leaves the model untouched. Prints the report only when `verbose`."""
    if isinstance(recipe, Recipe):
        if default is not None or on_error is not None:
            raise SpecError("quantize_model: pass default/on_error inside the Recipe, not as arguments")
    else:
        recipe = Recipe.from_mapping(recipe, SKIP if default is None else default,
                                     "raise" if on_error is None else on_error)
    calib = dict(calib or {})
    report = QuantizeReport()
    tied = _tied_to(model)
    plan: list[tuple[str, nn.Linear, FormatSpec, str]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if not name:
            raise SpecError("quantize_model: the model itself is an nn.Linear; use QuantLinear.from_linear")
        glob, target = recipe.target_for(name)
        if target is None:
            report.skipped[name] = f"recipe rule {glob!r} says skip" if glob else "no rule matched; default is skip"
            continue
        fmt, options = target
        spec = ir.get_format(fmt, **options)
        try:
            _check(name, module, spec, tied)
        except SpecError as e:
            if recipe.on_error == "raise":
                raise
            report.skipped[name] = f"{_label(fmt, options)} refused it: {e}"
            continue
        plan.append((name, module, spec, _label(fmt, options)))
    unknown = sorted(set(calib) - {p[0] for p in plan})
    if unknown:
        raise SpecError(f"quantize_model: calib names layers that are not being quantized: {unknown}")
    for name, module, spec, label in plan:
        try:
            q = QuantLinear.from_linear(module, spec, name=name, **calib.get(name, {}))
        except SpecError as e:
            if recipe.on_error == "raise":
                done = len(report.replaced)
                raise SpecError(f"{e}" + (f" ({done} layer(s) before it were already replaced)" if done else "")) from e
            report.skipped[name] = f"{label} refused it: {e}"
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, q)
        report.replaced[name] = label
    if verbose:
        print(report)
    return report


__all__ = ["Recipe", "QuantizeReport", "SKIP", "quantize_model", "unsloth_dynamic_4bit", "DEFAULT_SENSITIVE"]
