"""The torch custom op `quantcc::quant_linear` and its dispatch: y = x @ W^T (+ bias), W held in a format's
canonical tensors.

Why a custom op: `torch.compile(fullgraph=True)` sees one opaque node whose fake (meta) implementation only
computes the output shape, so it never traces into kernel launch code or the reference decoders, and a CUDA
graph captures the kernel launch the op makes.

Dispatch, per call (the decision is cached per (format, N, K, M bucket, device, dtype, backend)):
- CUDA, x float16/bfloat16, a backend preference other than "triton" (`set_backend`, or QuantLinear's
  `backend`), and a registered prebuilt TVM kernel for (format, N, K) whose case is in the call's M bucket
  (runtime/tvm_artifacts.py: `use_tvm_artifacts`, QUANTCC_TVM_ARTIFACTS): that cubin, launched through
  runtime/cubin.py on torch's current stream. Kernels for (format, N, K) built for another arch only are
  refused (TvmArtifactError); a missing M bucket, or backend "tvm" with no kernel for (format, N, K), falls
  back to Triton and says so once. "auto" (the default) runs a registered TVM kernel only where this GPU's
  tuning database has a TVM entry for the bucket whose artifact is registered (same kernel hash) and that
  beat the bucket's Triton entry (`python -m autotune sweep --backend tvm`); otherwise Triton, said once.
  "tvm" runs the tuned TVM kernel when registered, else the first registered one.
- CUDA, x float16/bfloat16, and a Triton decode template for the format family: the generated Triton kernel
  for (arch, N, K, M bucket) with the config from the tuning database (`runtime.tuning.lookup_config`), or the
  per-arch heuristic `codegen.arch.default_config` when the database has no entry (logged once per (format,
  N, K)). Kernels are rendered and cached on disk by `runtime.kernels.get_kernel` and JIT-compiled by Triton
  at their first launch, so the first call per M bucket is slow: `QuantLinear.warmup(...)` compiles ahead,
  and must run before CUDA-graph capture.
- otherwise the reference: `ir.dequantize` (on the CPU) + a float32 matmul, the result cast to x's dtype.
  On CUDA that path copies the weight to the host every call (slow, not capturable); it is logged once.
  QuantLinear.cache_dequantized() keeps a decoded copy instead, for formats without a kernel.

Every canonical tensor is read as stored: no format needs a device layout today, so nothing is repacked.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from codegen.arch import arch_of_capability, default_config
from codegen.env import TEMPLATE_ROOT
from ir import FormatSpec, QuantizedTensor, SpecError, dequantize
from ir.actquant import quantize_activation_ref

from . import tvm_artifacts
from .device import machine_header
from .envknobs import force_reference
from .kernels import get_kernel
from .tuning import lookup_config, m_bucket

log = logging.getLogger("quantcc.runtime")
KERNEL_DTYPES = (torch.float16, torch.bfloat16)
BACKENDS = ("auto", "triton", "tvm")
_backend = "auto"

_SPECS: dict[str, FormatSpec] = {}
_warned: set = set()


def register_spec(spec: FormatSpec) -> str:
    """Make `spec` reachable from the op by its key (the op takes strings, not Python objects)."""
    _SPECS.setdefault(spec.key, spec)
    return spec.key


def _spec(key: str) -> FormatSpec:
    try:
        return _SPECS[key]
    except KeyError:
        raise SpecError(f"quant_linear: no format registered under key {key[:12]}...; build the layer through "
                        f"runtime.QuantLinear (it registers its spec)") from None


def _warn_once(key, msg: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning("quantcc: " + msg, *args)


def set_backend(backend: str) -> None:
    """The process-wide kernel preference: "auto" (a registered TVM kernel where the tuning database measured
    it faster than Triton for the call's bucket, else Triton), "tvm" (a registered TVM kernel wherever one
    serves the call; a layer without one says so once) or "triton" (never TVM).
    QuantLinear(..., backend=...) overrides it per layer."""
    global _backend
    _backend = check_backend(backend)


def get_backend() -> str:
    return _backend


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise SpecError(f"backend {backend!r} is not available; expected one of {list(BACKENDS)}")
    return backend


def has_triton_kernel(spec: FormatSpec) -> bool:
    """A Triton decode template exists for the format family (templates/triton/decode/<family>.jinja)."""
    return _has_template(spec.family)


@functools.lru_cache(maxsize=None)
def _has_template(family: str) -> bool:
    return (TEMPLATE_ROOT / "triton" / "decode" / f"{family}.jinja").is_file()


def _on_gpu(device: torch.device) -> bool:
    return device.type == "cuda"


def uses_kernel(spec: FormatSpec, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a call with x of `dtype` on `device` goes to a generated kernel (else to the reference path)."""
    return _on_gpu(device) and dtype in KERNEL_DTYPES and has_triton_kernel(spec) and not force_reference()


# -- the reference path ------------------------------------------------------------------------------------
def reference_weight(spec: FormatSpec, tensors: dict[str, torch.Tensor], N: int, K: int) -> torch.Tensor:
    """W (N, K) float32 on the CPU, decoded by the format's bit-exact reference decoder."""
    return dequantize(QuantizedTensor(spec, (N, K), tensors))


def reference_matmul(spec: FormatSpec, tensors: dict[str, torch.Tensor], x: torch.Tensor, W: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """x @ W^T (+ bias) in float32 with the format's static activation quantization applied to x first, as
    the kernels compute it; returned in x's dtype."""
    xf = x.to(torch.float32)
    if spec.act_quant is not None:
        xf = quantize_activation_ref(spec, tensors, xf)
    y = xf @ W.to(device=x.device, dtype=torch.float32).T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


# -- the kernel path ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dispatch:
    """What one (format, N, K, M bucket, device) runs: kind 'tvm', 'triton' or 'reference', the kernel's
    name, and where it came from ('artifact:<folder>' for TVM; the Triton config's 'db', 'db-stale',
    'heuristic'), or why the reference runs."""

    kind: str
    bucket: int
    kernel: str = ""
    source: str = ""
    reason: str = ""
    run: Callable | None = None


_DISPATCH: dict[tuple, Dispatch] = {}


def _device_arch(device: torch.device) -> str:
    return arch_of_capability(*torch.cuda.get_device_capability(device))


def _device_header(device: torch.device) -> dict:
    return machine_header(device.index or 0)


def _select(spec: FormatSpec, N: int, K: int, bucket: int, device: torch.device) -> Dispatch:
    try:
        arch = _device_arch(device)
    except SpecError as e:
        return Dispatch("reference", bucket, reason=str(e))
    hit = lookup_config(spec, N, K, bucket, _device_header(device))
    config, source = (hit.config, hit.source) if hit is not None else (None, "heuristic")
    if config is None:
        config = default_config(spec, (bucket, N, K), arch)
        _warn_once(("heuristic", spec.key, N, K), "no tuned config for %s N=%d K=%d on %s (first at M bucket "
                   "%d); using the %s heuristic %s. Tune with `python -m autotune sweep`.",
                   spec.name, N, K, arch, bucket, arch, config.label)
    try:
        module = get_kernel(spec, bucket, N, K, arch, config)
    except SpecError as e:
        if source == "heuristic":
            return Dispatch("reference", bucket, reason=f"no kernel for {spec.name} on {arch}: {e}")
        _warn_once(("bad-db", spec.key, N, K, bucket), "tuned config %s for %s N=%d K=%d M-bucket %d is "
                   "refused (%s); using the heuristic", config.label, spec.name, N, K, bucket, e)
        config, source = default_config(spec, (bucket, N, K), arch), "heuristic"
        module = get_kernel(spec, bucket, N, K, arch, config)
    return Dispatch("triton", bucket, kernel=module.KERNEL_NAME, source=source, run=module.run)


def _select_tvm(spec: FormatSpec, N: int, K: int, bucket: int, device: torch.device,
                backend: str) -> Dispatch | None:
    """The TVM kernel for the call (runtime.tvm_artifacts.choose: "auto" only where this GPU's tuning database
    says it beat Triton), or None (then Triton runs; said once where it matters)."""
    try:
        arch = _device_arch(device)
    except SpecError:
        return None   # _select reports it
    c = tvm_artifacts.choose(spec, N, K, bucket, arch, backend, _device_header(device))  # raises for another arch
    if c.kernel is not None:
        return Dispatch("tvm", bucket, kernel=c.kernel.name, source=f"artifact:{c.kernel.folder}",
                        run=tvm_artifacts.load(c.kernel))
    if c.note:
        _warn_once(c.note_key, "%s", c.note)
    return None


def dispatch_for(spec: FormatSpec, N: int, K: int, M: int, device: torch.device, dtype: torch.dtype,
                 backend: str | None = None) -> Dispatch:
    """The dispatch decision for a call with M rows of `dtype` on `device` (cached; builds the Triton
    kernel). `backend` is the layer's preference; None follows `set_backend`."""
    bucket = m_bucket(M)
    forced = force_reference()
    backend = _backend if backend is None else check_backend(backend)
    key = (spec.key, N, K, bucket, device.type, device.index, dtype, forced, backend,
           tvm_artifacts.state() if backend != "triton" else None)
    d = _DISPATCH.get(key)
    if d is not None:
        return d
    gpu_call = not forced and _on_gpu(device) and dtype in KERNEL_DTYPES
    if gpu_call and backend != "triton":
        d = _select_tvm(spec, N, K, bucket, device, backend)
    if d is None and uses_kernel(spec, device, dtype):
        d = _select(spec, N, K, bucket, device)
    elif d is None:
        why = ("QUANTCC_FORCE_REFERENCE=1" if forced else
               "not on CUDA" if not _on_gpu(device) else
               f"x is {dtype}; kernels take float16/bfloat16" if dtype not in KERNEL_DTYPES else
               f"no Triton decode template for format family {spec.family!r}")
        d = Dispatch("reference", bucket, reason=why)
    _DISPATCH[key] = d
    return d


# -- the op ------------------------------------------------------------------------------------------------
@torch.library.custom_op("quantcc::quant_linear", mutates_args=())
def quant_linear(x: torch.Tensor, tensors: list[torch.Tensor], names: str, bias: Optional[torch.Tensor],
                 spec_key: str, n: int, backend: str = "") -> torch.Tensor:
    """y (..., n) = x (..., K) @ W^T (+ bias). `tensors` are the canonical tensors named by the
    comma-separated `names`; `spec_key` is a key registered with `register_spec`; `backend` is the layer's
    preference ("" follows `set_backend`)."""
    return run_quant_linear(_spec(spec_key), dict(zip(names.split(","), tensors)), x, bias, n, backend or None)


def run_quant_linear(spec: FormatSpec, td: dict[str, torch.Tensor], x: torch.Tensor, bias: Optional[torch.Tensor],
                     n: int, backend: str | None = None) -> torch.Tensor:
    """The body of the op, callable directly: QuantLinear calls it in eager mode, skipping the custom-op
    dispatcher (~150 us per call on the H100 host, more than the kernel at decode sizes); torch.compile
    traces the op instead."""
    K = x.shape[-1]
    M = x.numel() // K if K else 0
    if M == 0:
        return x.new_zeros((*x.shape[:-1], n))
    d = dispatch_for(spec, n, K, M, x.device, x.dtype, backend)
    if d.kind == "triton":
        return d.run(x, td, n, bias=bias)
    if d.kind == "tvm":   # the cubin takes a contiguous bias of x's dtype
        return d.run(x, td, n, bias=None if bias is None else bias.to(x.dtype).contiguous())
    if x.is_cuda:
        _warn_once(("reference", spec.key, n, K, x.dtype), "%s N=%d K=%d runs the reference decode on the CPU "
                   "every call (%s); QuantLinear.cache_dequantized() keeps a decoded copy", spec.name, n, K,
                   d.reason)
    return reference_matmul(spec, td, x, reference_weight(spec, td, n, K), bias)


@quant_linear.register_fake
def _(x, tensors, names, bias, spec_key, n, backend=""):
    return x.new_empty((*x.shape[:-1], n))
