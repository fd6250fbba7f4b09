"""GPU correctness and timing of prebuilt TVM kernels (cubins) on a machine without TVM.

PYTHONPATH=. python -m bench.tvm_gpu_check FOLDER [FOLDER ...] [--batches 1 16] [--out FILE.json]

Each FOLDER is an artifact folder written on the build machine by
`python -m codegen build FORMAT --arch sm90 --backend all --shapes 4096,4096 --batches 1 16 --out FOLDER`.
For every TVM kernel and every case (M, N, K) it was built for: valid synthetic stored tensors
(ir.synthetic), the reference W decoded by ir.dequantize, x in fp16 and bf16, the output pre-filled with
NaN, max relative error vs x @ W^T in float64 (with a bias on the fp16 run); then the median CUDA-graph time
of the cubin (launched through runtime/cubin.py with cuda.core), of the folder's Triton kernel for the same
case when the folder has one, and of fp16 cuBLAS (F.linear), all in the same run, plus the eager
per-call time of the cubin launcher (its Python argument checks included)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import ir
from ir.reference import reference_matmul
from ir.synthetic import synthetic_quantized
from runtime.cubin import load
from runtime.loader import load_kernel_module

from .timing import time_eager_us, time_us

REL_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def _triton_for(folder: Path, manifest: dict, case: dict):
    for k in manifest["kernels"]:
        if k["backend"] == "triton" and case in k["cases"]:
            return k["name"], load_kernel_module(folder / k["file"])
    return None, None


def check_folder(folder: Path, batches: list[int] | None, dev: torch.device) -> list[dict]:
    manifest = json.loads((folder / "manifest.json").read_text())
    spec = ir.FormatSpec.from_dict(manifest["spec"])
    rows = []
    problems = {}   # (N, K) -> (stored tensors on dev, W float64): one synthetic problem per shape

    def problem(N, K):
        if (N, K) not in problems:
            qt = synthetic_quantized(spec, N, K, seed=N + K)
            problems[(N, K)] = qt, ir.dequantize(qt, device=dev).to(torch.float64), \
                {k: v.to(dev) for k, v in qt.tensors.items()}
        return problems[(N, K)]

    for entry in (k for k in manifest["kernels"] if k["backend"] == "tvm"):
        kern = load(folder, entry["name"])
        for case in entry["cases"]:
            M, N, K = case["M"], case["N"], case["K"]
            if batches and M not in batches:
                continue
            row = {"format": spec.name, "kernel": entry["name"], "N": N, "K": K, "M": M,
                   "config": entry["config"], "schedule": entry["launch"]["schedule"],
                   "resources": entry["launch"]["resources"]["float16"]}
            try:
                qt, W, tensors = problem(N, K)
                g = torch.Generator(device=dev).manual_seed(M)
                for dtype in (torch.float16, torch.bfloat16):
                    x = (torch.randn(M, K, device=dev, generator=g) * 0.5).to(dtype)
                    bias = (torch.randn(N, device=dev, generator=g) * 0.1).to(dtype) if dtype == torch.float16 else None
                    out = torch.full((M, N), float("nan"), device=dev, dtype=dtype)
                    kern(x, tensors, N, bias=bias, out=out)
                    torch.cuda.synchronize()
                    ref = reference_matmul(qt, x, W) + (bias.double() if bias is not None else 0.0)
                    key = "f16" if dtype == torch.float16 else "bf16"
                    row[f"rel_err_{key}"] = _rel_err(out, ref)
                    row[f"nan_{key}"] = bool(torch.isnan(out).any())
                    row[f"ok_{key}"] = not row[f"nan_{key}"] and row[f"rel_err_{key}"] < REL_TOL[dtype]
                x = (torch.randn(M, K, device=dev, generator=g) * 0.5).half()
                out = torch.empty((M, N), device=dev, dtype=torch.float16)
                row["tvm_us"] = time_us(lambda: kern(x, tensors, N, out=out))
                row["tvm_eager_us"] = time_eager_us(lambda: kern(x, tensors, N, out=out))
                try:  # the Triton kernel of the same case, when the folder has one; its failure is its own
                    tname, tmod = _triton_for(folder, manifest, case)
                    if tmod is not None:
                        y_t = torch.empty_like(out)
                        tmod.run(x, tensors, N, out=y_t)
                        row["triton_kernel"] = tname
                        row["triton_rel_err_f16"] = _rel_err(y_t, reference_matmul(qt, x, W))
                        row["triton_us"] = time_us(lambda: tmod.run(x, tensors, N, out=y_t))
                except Exception as e:
                    row["triton_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                Wh = W.to(torch.float16)
                row["fp16_us"] = time_us(lambda: torch.nn.functional.linear(x, Wh))
                nbytes = sum(v.numel() * v.element_size() for v in tensors.values()) + M * K * 2 + M * N * 2
                row["tvm_tbps"] = nbytes / row["tvm_us"] / 1e6
            except Exception as e:  # a failing kernel is a result, reported, never hidden
                row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--batches", nargs="+", type=int, default=None, help="only these M (default: all built cases)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    rows = []
    for folder in args.folders:
        rows += check_folder(folder, args.batches, dev)
        if args.out:   # after every folder, so a run cut short still leaves what it measured
            Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                                  "rows": rows}, indent=1))
    print(f"{'format':16s} {'N x K':>11s} {'M':>4s} {'err f16':>8s} {'err bf16':>8s} {'TVM us':>8s} {'eager':>7s} "
          f"{'Triton us':>9s} {'fp16 us':>8s} {'TVM TB/s':>8s}  kernel")
    for r in rows:
        head = f"{r['format']:16s} {r['N']:>5d}x{r['K']:<5d} {r['M']:4d}"
        if "error" in r:
            print(f"{head} ERROR {r['error'][:120]}")
            continue
        tri = f"{r['triton_us']:9.1f}" if "triton_us" in r else f"{'error' if 'triton_error' in r else '-':>9s}"
        print(f"{head} {r['rel_err_f16']:8.1e} {r['rel_err_bf16']:8.1e} {r['tvm_us']:8.1f} {r['tvm_eager_us']:7.1f} "
              f"{tri} {r['fp16_us']:8.1f} {r['tvm_tbps']:8.2f}  {r['kernel']}"
              f"{'' if r['ok_f16'] and r['ok_bf16'] else '  <-- WRONG'}")
    bad = [r for r in rows if "error" in r or not (r["ok_f16"] and r["ok_bf16"])]
    print(f"{len(rows) - len(bad)}/{len(rows)} cases correct")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
