"""QuantLinear: an nn.Linear whose weight is held in a quantization format's canonical tensors.

The canonical tensors are buffers named as the format names them (`qweight`, `qzeros`, `scales`, `g_idx` for
GPTQ; `weight`, `absmax`, ... for bitsandbytes; `blocks` for GGUF), so a state dict reads like the origin's.
`module.to(dtype)` casts the bias only: the format's tensors keep their stored dtypes (a cast would change
the bytes the decoders read). forward calls the `quantcc::quant_linear` custom op (runtime/op.py), which
runs the generated kernel on CUDA and the reference decode + matmul elsewhere.

On CUDA a registered prebuilt TVM kernel (runtime/tvm_artifacts.py) runs instead of the Triton one where it
serves the call's (format, N, K, M bucket); `backend=` ("auto", "triton", "tvm") sets the preference per
layer, `runtime.set_backend` for the process.

Kernels compile at the first call per M bucket (1, 2, 4, ..., 256, >256 rows); `warmup(batches)` compiles
ahead, and must run before capturing a CUDA graph.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

import ir
from ir import FormatSpec, QuantizedTensor, SpecError
from ir.tensor import validate_tensors

from . import op

DEFAULT_WARMUP_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_RESERVED = frozenset({"bias", "spec", "in_features", "out_features", "training", "backend"})


def _as_spec(spec: FormatSpec | str) -> FormatSpec:
    if isinstance(spec, str):
        return ir.get_format(spec)
    if not isinstance(spec, FormatSpec):
        raise SpecError(f"expected a FormatSpec or a registered format name, got {type(spec).__name__}")
    return spec


class QuantLinear(nn.Module):
    """y = x @ W^T (+ bias) with W (out_features, in_features) stored in `spec`'s canonical layout.

    x may have any leading dims. On CUDA with float16/bfloat16 x the generated Triton kernel for (GPU arch,
    N, K, M bucket) runs with its tuned config (tuning database) or the arch heuristic; elsewhere the
    reference decoder + a float32 matmul runs, recomputing W every call unless `cache_dequantized()` was
    called (a float32 copy of W: 8x the memory of a 4-bit weight). `backend` ("auto", "triton", "tvm"; None
    follows runtime.set_backend) chooses between a registered prebuilt TVM kernel and the Triton one."""

    def __init__(self, spec: FormatSpec, in_features: int, out_features: int, tensors: Mapping[str, torch.Tensor],
                 bias: torch.Tensor | None = None, backend: str | None = None):
        super().__init__()
        tensors = dict(tensors)
        validate_tensors(spec, (out_features, in_features), tensors)
        for name in tensors:
            if name in _RESERVED or hasattr(QuantLinear, name) or name.startswith("_"):
                raise SpecError(f"{spec.name}: tensor name {name!r} clashes with a QuantLinear attribute")
        devices = {t.device for t in tensors.values()}
        if len(devices) > 1:
            raise SpecError(f"{spec.name}: tensors are on several devices {sorted(map(str, devices))}")
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (out_features,)
                                 or not bias.dtype.is_floating_point):
            raise SpecError(f"{spec.name}: bias must be a float tensor of shape ({out_features},), got "
                            f"{getattr(bias, 'shape', type(bias).__name__)} {getattr(bias, 'dtype', '')}")
        self.spec = spec
        self.backend = backend
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self._names = tuple(t.name for t in spec.tensors if t.name in tensors)
        self._names_arg = ",".join(self._names)
        self._spec_key = op.register_spec(spec)  # spec.key hashes JSON: computed once, not per call
        for name in self._names:
            self.register_buffer(name, tensors[name].contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().contiguous())
        self.register_buffer("_dequantized", None, persistent=False)

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_quantized(cls, qt: QuantizedTensor, bias: torch.Tensor | None = None,
                       backend: str | None = None) -> "QuantLinear":
        N, K = qt.shape
        return cls(qt.spec, K, N, qt.tensors, bias, backend)

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: FormatSpec | str, name: str | None = None,
                    **calib: Any) -> "QuantLinear":
        """Quantize `linear` (round to nearest on the CPU; `calib` goes to the format's encoder). The result
        lives on the linear's device. A shape or dtype the format cannot take raises ir.SpecError naming
        the layer (`name`, else its shape)."""
        label = name or f"nn.Linear({getattr(linear, 'in_features', '?')}, {getattr(linear, 'out_features', '?')})"
        if not isinstance(linear, nn.Linear):
            raise SpecError(f"layer {label}: expected an nn.Linear, got {type(linear).__name__}")
        W = linear.weight
        if W.device.type == "meta":
            raise SpecError(f"layer {label}: its weight is on the meta device; load real weights before quantizing")
        try:
            spec = _as_spec(spec)
            qt = ir.quantize(spec, W.detach(), **calib)
        except SpecError as e:
            raise SpecError(f"layer {label}: {e}") from e
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls.from_quantized(qt.to(W.device), bias)

    def __setstate__(self, state):  # unpickled / deep-copied modules must be reachable from the op too
        super().__setstate__(state)
        self.__dict__.setdefault("_backend", None)   # pickled before the backend option existed
        op.register_spec(self.spec)

    @property
    def backend(self) -> str | None:
        """The layer's kernel preference ("auto", "triton", "tvm"), or None: runtime.set_backend's."""
        return self._backend

    @backend.setter
    def backend(self, value: str | None) -> None:
        self._backend = None if value is None else op.check_backend(value)

    # -- views ---------------------------------------------------------------------------------------------
    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n) for n in self._names}

    def quantized(self) -> QuantizedTensor:
        return QuantizedTensor(self.spec, (self.out_features, self.in_features), self.tensors)

    def dequantize(self) -> torch.Tensor:
        """W (out_features, in_features) float32 on the CPU, from the reference decoder."""
        return op.reference_weight(self.spec, self.tensors, self.out_features, self.in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={self.spec.name}, bits/w={self.spec.bits_per_weight(self.out_features, self.in_features):.3f}"
                + (f", backend={self.backend}" if self.backend else ""))

    # -- running -------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear({self.spec.name}): x has {x.shape[-1]} features in its last dim, "
                             f"expected in_features = {self.in_features}")
        tensors = [getattr(self, n) for n in self._names]
        if self._dequantized is not None and not op.uses_kernel(self.spec, x.device, x.dtype):
            return op.reference_matmul(self.spec, dict(zip(self._names, tensors)), x, self._dequantized, self.bias)
        if torch.compiler.is_compiling():  # traced as one opaque op (fake impl for shapes)
            return torch.ops.quantcc.quant_linear(x, tensors, self._names_arg, self.bias, self._spec_key,
                                                  self.out_features, self._backend or "")
        return op.run_quant_linear(self.spec, dict(zip(self._names, tensors)), x, self.bias, self.out_features,
                                   self._backend)

    def cache_dequantized(self, enable: bool = True) -> "QuantLinear":
        """Keep (or drop) a float32 decoded copy of W next to the tensors, used wherever no generated kernel
        runs (CPU, formats without a kernel, float32 x). It costs 32 bits per weight; off by default."""
        self._dequantized = self.dequantize().to(self._device()) if enable else None
        return self

    def warmup(self, batches: Iterable[int] = DEFAULT_WARMUP_BATCHES,
               dtype: torch.dtype = torch.float16) -> list[op.Dispatch]:
        """Build and compile the kernel for each M in `batches` now (one forward on zeros each), so no call
        compiles later (CUDA-graph capture needs this). Returns what each M dispatches to."""
        device = self._device()
        out = []
        with torch.no_grad():
            for M in batches:
                self(torch.zeros(M, self.in_features, dtype=dtype, device=device))
                out.append(self.dispatch(M, dtype))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    def dispatch(self, M: int, dtype: torch.dtype = torch.float16) -> op.Dispatch:
        """What a call with M rows of `dtype` runs on this module's device (kind 'tvm', 'triton' or
        'reference', kernel name, where it came from)."""
        return op.dispatch_for(self.spec, self.out_features, self.in_features, M, self._device(), dtype,
                               self._backend)

    def _device(self) -> torch.device:
        return getattr(self, self._names[0]).device

    def _apply(self, fn, recurse=True):
        """Moves apply to every tensor; dtype casts (model.half(), .to(torch.bfloat16)) to the bias only."""
        keep = {n: self._buffers[n] for n in (*self._names, "_dequantized") if self._buffers.get(n) is not None}
        super()._apply(fn, recurse)
        for n, old in keep.items():
            new = self._buffers[n]
            if new.dtype != old.dtype:
                self._buffers[n] = old.to(device=new.device)
        return self
