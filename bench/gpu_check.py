"""GPU correctness and timing for every format's generated Triton kernels at real shapes.

python -m bench.gpu_check [--formats ...] [--shapes N,K ...] [--batches ...] [--out FILE.json]

For each case: valid synthetic stored tensors (ir.synthetic), the reference W decoded on the CPU,
the output buffer pre-filled with NaN, max relative error vs x @ W^T in float64, then the median
CUDA-graph time of the kernel next to fp16 cuBLAS (F.linear) measured in the same run, and the
kernel's achieved TB/s over the bytes it must read (stored tensors + x + y)."""
from __future__ import annotations

import argparse
import json
import sys

import torch

import ir
from codegen.arch import arch_of_capability, default_config, kernel_family
from ir.reference import reference_matmul
from ir.synthetic import synthetic_quantized
from runtime.kernels import get_kernel

from .timing import time_us


def _shape(s):
    n, k = s.lower().replace("x", ",").split(",")
    return int(n), int(k)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--formats", nargs="+", default=None)
    p.add_argument("--shapes", nargs="+", type=_shape, default=[(4096, 4096), (8192, 28672)])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16, 128])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    arch = arch_of_capability(*torch.cuda.get_device_capability())
    formats = args.formats or ir.list_formats()
    rows = []
    for (N, K) in args.shapes:
        Wh = (torch.randn(N, K, device=dev) * 0.02).half()
        for name in formats:
            spec = ir.get_format(name)
            try:
                spec.check_shape(N, K)
            except ir.SpecError as e:
                rows.append({"format": name, "N": N, "K": K, "skipped": str(e)})
                continue
            qt = synthetic_quantized(spec, N, K, seed=N + K)
            W = ir.dequantize(qt, device=dev).to(torch.float64)
            tensors = {k: v.to(dev) for k, v in qt.tensors.items()}
            stored = sum(v.numel() * v.element_size() for v in tensors.values())
            for M in args.batches:
                row = {"format": name, "N": N, "K": K, "M": M, "bits_per_weight": spec.bits_per_weight(N, K)}
                try:
                    cfg = default_config(spec, (M, N, K), arch)
                    mod = get_kernel(spec, M, N, K, arch, cfg)
                    x = (torch.randn(M, K, device=dev) * 0.5).half()
                    out = torch.full((M, N), float("nan"), device=dev, dtype=torch.float16)
                    mod.run(x, tensors, N, out=out)
                    torch.cuda.synchronize()
                    ref = reference_matmul(qt, x, W)
                    err = ((out.double() - ref).norm() / ref.norm()).item()
                    row.update(family=kernel_family(M), config=cfg.label, rel_err=err,
                               nan=bool(torch.isnan(out).any()))
                    t_k = time_us(lambda: mod.run(x, tensors, N, out=out))
                    t_fp16 = time_us(lambda: torch.nn.functional.linear(x, Wh))
                    nbytes = stored + x.numel() * 2 + M * N * 2
                    row.update(us=t_k, fp16_us=t_fp16, speedup_vs_fp16=t_fp16 / t_k, bytes=nbytes,
                               tbps=nbytes / t_k / 1e6)
                except Exception as e:  # a failing kernel is a result, reported, never hidden
                    row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "arch": arch, "torch": torch.__version__,
                       "rows": rows}, f, indent=1)
    print(f"{'format':22s} {'N x K':>12s} {'M':>4s} {'rel err':>9s} {'us':>9s} {'fp16 us':>9s} {'x fp16':>7s} {'TB/s':>6s}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['format']:22s} {r['N']}x{r['K']:<6d} skipped: {r['skipped'][:60]}")
        elif "error" in r:
            print(f"{r['format']:22s} {r['N']:>5d}x{r['K']:<6d} {r['M']:4d} ERROR {r['error'][:80]}")
        else:
            print(f"{r['format']:22s} {r['N']:>5d}x{r['K']:<6d} {r['M']:4d} {r['rel_err']:9.2e} {r['us']:9.1f} "
                  f"{r['fp16_us']:9.1f} {r['speedup_vs_fp16']:7.2f} {r['tbps']:6.2f}")
    bad = [r for r in rows if "error" in r or r.get("nan") or r.get("rel_err", 0) > 5e-3]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
