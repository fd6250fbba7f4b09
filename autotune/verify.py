"""Verify, then time: one candidate config becomes a `Trial` (its time, or infinity and why).

For each candidate: build the generated module (runtime.kernels.get_kernel: lowering refuses illegal
configs), run it on fresh random x into an output pre-filled with NaN, compare with
x @ ir.dequantize(qt).T computed in float64 (the format's static activation quantization applied to x
first when it has one), and only if the relative error ||y - ref|| / ||ref|| is within the dtype's
tolerance, time it (bench.timing.time_us: CUDA-graph replay, do_bench median, L2 flushed) and check the
output again after the timed replays. A fast wrong kernel never gets a time. Any exception (render,
compile, launch, wrong result) scores infinity and is logged with a one-line repro command.

Compilation happens ahead of this, in parallel worker processes (autotune/aot.py), so `evaluate` normally
finds each candidate's kernel in triton's cache."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

import ir
from ir import FormatSpec, KernelConfig
from ir.synthetic import synthetic_quantized

log = logging.getLogger("quantcc.autotune")

# dtype-aware tolerance on ||y - ref|| / ||ref||: fp16 keeps ~11 bits, bf16 ~8; the gemm family rounds the
# decoded tile to the activation dtype before tl.dot, and y is rounded to it once (same bounds as the
# kernel tests).
REL_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SCREEN_REP_MS = 20      # do_bench repetition window while screening candidates
FINAL_REP_MS = 100      # ... when re-timing the finalists and the default side by side

Timer = Callable[[Callable[[], object], int], float]


class VerificationError(AssertionError):
    pass


class ContextLost(RuntimeError):
    """The CUDA context is unusable after a failure (illegal address, ...): the sweep must stop."""


@dataclass
class Reference:
    """One (format, N, K) problem's stored tensors on the device and its reference weights in float64."""

    spec: FormatSpec
    fmt_arg: str                    # how the CLI names the format (name[:opt=val,...]), for repro lines
    N: int
    K: int
    tensors: dict
    cpu_tensors: dict
    W64: torch.Tensor
    device: torch.device

    @classmethod
    def build(cls, spec: FormatSpec, fmt_arg: str, N: int, K: int, device: str | torch.device,
              seed: int = 0, qt: ir.QuantizedTensor | None = None) -> "Reference":
        """Valid random stored tensors (ir.synthetic) unless `qt` is given, decoded once by the reference."""
        qt = qt if qt is not None else synthetic_quantized(spec, N, K, seed=seed)
        device = torch.device(device)
        # the reference decoder's torch code, run on the device at real shapes (ir falls back to the CPU
        # for a codec that cannot); the tolerance below dwarfs any rounding difference between the two
        W64 = ir.dequantize(qt, device=device if device.type == "cuda" else None).to(device).to(torch.float64)
        tensors = {k: v.to(device) for k, v in qt.tensors.items()}
        return cls(spec, fmt_arg, N, K, tensors, dict(qt.tensors), W64, device)

    def inputs(self, M: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y_ref): fresh random x for this seed, and x @ W^T in float64 on the device."""
        g = torch.Generator().manual_seed(seed)
        x = (torch.randn(M, self.K, generator=g) * 0.5).to(dtype)
        x64 = x.to(torch.float64)
        if self.spec.act_quant is not None:
            from ir.actquant import quantize_activation_ref
            x64 = quantize_activation_ref(self.spec, self.cpu_tensors, x64)
        return x.to(self.device), x64.to(self.device) @ self.W64.T


@dataclass
class Trial:
    config: KernelConfig
    us: float = math.inf
    rel_err: float | None = None
    stage: str = ""                 # where it failed: build | verify | time ("" when it succeeded)
    error: str = ""
    repro: str = ""

    @property
    def ok(self) -> bool:
        return math.isfinite(self.us)


def repro_command(fmt_arg: str, N: int, K: int, M: int, config: KernelConfig, backend: str = "triton",
                  dtype: torch.dtype = torch.float16) -> str:
    cfg = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return (f"PYTHONPATH=. python -m autotune check --format {fmt_arg} --shape {N},{K} --batch {M} "
            f"--backend {backend} --dtype {str(dtype).replace('torch.', '')} --config '{cfg}'")


def build_module(spec: FormatSpec, M: int, N: int, K: int, arch: str, config: KernelConfig, family: str):
    from runtime.kernels import get_kernel
    return get_kernel(spec, M, N, K, arch, config, family)


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    y64 = y.to(torch.float64)
    if torch.isnan(y64).any():
        raise VerificationError(f"{int(torch.isnan(y64).sum())} of {y64.numel()} outputs are NaN "
                                f"(unwritten or non-finite)")
    return ((y64 - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check_output(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> float:
    err = rel_error(y, ref)
    if not err <= REL_TOL[dtype]:
        raise VerificationError(f"relative error {err:.3g} > tolerance {REL_TOL[dtype]:g} for {dtype}")
    return err


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:300]}"


def _context_alive(device: torch.device) -> None:
    if device.type != "cuda":
        return
    try:
        torch.cuda.synchronize(device)
    except RuntimeError as e:
        raise ContextLost(f"the CUDA context failed after a candidate ({_one_line(e)}); restart the sweep: "
                          f"it resumes from the database") from e


def evaluate(ref: Reference, M: int, config: KernelConfig, *, arch: str, family: str,
             dtype: torch.dtype = torch.float16, timer: Timer | None = None, rep_ms: int = SCREEN_REP_MS,
             seed: int = 0, backend: str = "triton", module=None, raise_errors: bool = False) -> Trial:
    """Build (unless `module` is given), verify on fresh data, then time one config. `timer(fn, rep_ms)`
    returns microseconds; None means verify only (us = 0.0, e.g. under the CPU interpreter)."""
    trial = Trial(config, repro=repro_command(ref.fmt_arg, ref.N, ref.K, M, config, backend, dtype))
    stage = "build"
    try:
        mod = module if module is not None else build_module(ref.spec, M, ref.N, ref.K, arch, config, family)
        stage = "verify"
        x, y_ref = ref.inputs(M, dtype, seed)
        out = torch.full((M, ref.N), float("nan"), dtype=dtype, device=ref.device)
        y = mod.run(x, ref.tensors, ref.N, out=out)
        if y.data_ptr() != out.data_ptr():
            raise VerificationError("run() did not return the `out` buffer it was given")
        trial.rel_err = check_output(out, y_ref, dtype)
        if timer is None:
            trial.us = 0.0
            return trial
        stage = "time"
        trial.us = float(timer(lambda: mod.run(x, ref.tensors, ref.N, out=out), rep_ms))
        check_output(out, y_ref, dtype)      # the replays must leave the same answer
        if not trial.us > 0:
            raise RuntimeError(f"timer returned {trial.us}")
    except Exception as e:
        if raise_errors:
            raise
        trial.us, trial.stage, trial.error = math.inf, stage, _one_line(e)
        log.warning("autotune: %s %s failed at %s: %s\n  repro: %s", ref.spec.name, config.label, stage,
                    trial.error, trial.repro)
        _context_alive(ref.device)
    return trial
