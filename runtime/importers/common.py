"""The result every importer returns, and how it goes into a model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ir import QuantizedTensor, SpecError

from ..linear import QuantLinear


@dataclass
class Imported:
    """layers: module name -> QuantizedTensor; biases: module name -> bias; tensors: every other tensor by
    its key in the source; skipped: source tensor name -> why it was not imported; source: where from."""

    layers: dict[str, QuantizedTensor] = field(default_factory=dict)
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def quant_linear(self, name: str) -> QuantLinear:
        return QuantLinear.from_quantized(self.layers[name], self.biases.get(name))

    def apply(self, model: nn.Module, rename: Callable[[str], str] | None = None) -> nn.Module:
        """Replace each imported layer's nn.Linear in `model` (names mapped through `rename`, e.g. GGUF
        'blk.0.attn_q' -> 'model.layers.0.self_attn.q_proj') by a QuantLinear and load the other tensors.
        Every model tensor must be covered and every imported one used; errors name what does not fit."""
        rename = rename or (lambda n: n)
        quant_keys = set()
        for name in self.layers:
            target = rename(name)
            try:
                module = model.get_submodule(target)
            except AttributeError:
                raise SpecError(f"{self.source}: layer {name!r} (as {target!r}) has no module in the model") from None
            N, K = self.layers[name].shape
            if not isinstance(module, (nn.Linear, QuantLinear)) or (module.out_features, module.in_features) != (N, K):
                raise SpecError(f"{self.source}: layer {name!r} holds a ({N}, {K}) weight but the model has {module!r}")
            q = self.quant_linear(name)
            parent, _, child = target.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, q)
            quant_keys |= {f"{target}.{k}" for k in q.state_dict()}
        rest = {_rename_key(k, rename): v for k, v in self.tensors.items()}
        model_keys = set(model.state_dict())
        missing, unused = sorted(model_keys - quant_keys - set(rest)), sorted(set(rest) - model_keys)
        if missing or unused:
            raise SpecError(f"{self.source}: the model and the import do not match: model tensors not imported "
                            f"{missing[:8]}, imported tensors the model lacks {unused[:8]}")
        model.load_state_dict(rest, strict=False)
        return model




def _rename_key(key: str, rename: Callable[[str], str]) -> str:
    """'<module>.<tensor>' with the module part renamed."""
    module, _, leaf = key.rpartition(".")
    return f"{rename(module)}.{leaf}" if module else key


def read_state_dict(source, what: str) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, label) from a state dict, a .safetensors file, or a folder of .safetensors shards."""
    if isinstance(source, dict):
        return dict(source), f"{what} state dict"
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(source)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise SpecError(f"{what}: {path} is neither a .safetensors file nor a folder holding some")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError) as e:
            raise SpecError(f"{what}: cannot read {f} ({e}); truncated or not safetensors?") from e
        dup = sorted(set(part) & set(out))
        if dup:
            raise SpecError(f"{what}: tensors {dup[:5]} appear in several shards of {path}")
        out.update(part)
    return out, str(path)


def claim_biases(imp: Imported) -> Imported:
    """Move '<layer>.bias' of every imported layer from `tensors` to `biases`."""
    for name in imp.layers:
        b = imp.tensors.pop(f"{name}.bias", None)
        if b is not None:
            imp.biases[name] = b
    return imp
