"""Config probe: time one format over a small grid of tile configs at real shapes (a kernel-design tool;
`python -m autotune` is the real search). Same timing as everything else (CUDA-graph replay, L2 flushed).

python -m bench.probe FORMAT [-o k=v ...] --shapes 4096,4096 8192,28672 --batches 1 16 128
    [--configs m1n128k128s16w4p3 ...] [--from-db] [--json OUT]
--configs replaces the built-in grid by the listed config labels (KernelConfig.label); --from-db adds, per case,
the config the tuning database holds for it (any kernel hash: a tuned config of an older kernel, re-timed)."""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys

import torch

import ir
from codegen.__main__ import _options, _shape
from codegen.arch import arch_of_capability, default_config, kernel_family
from ir import KernelConfig, SpecError
from ir.synthetic import synthetic_quantized
from runtime.kernels import get_kernel

from .read_floor import read_floor_us
from .run import reference
from .timing import time_us


def grid(M: int, K: int):
    if kernel_family(M) == "gemv":
        for bn, bk, sk, w, st in itertools.product((32, 64, 128), (64, 128), (2, 4, 8, 16), (4, 8), (2, 3)):
            yield KernelConfig(block_m=max(1, min(4, M)), block_n=bn, block_k=bk, split_k=sk, num_warps=w, num_stages=st)
    else:
        bm = 16 if M <= 16 else 64 if M <= 64 else 128
        for bn, bk, sk, w, st, sw in itertools.product((64, 128), (128,), (1, 2, 4), (4, 8), (3, 4), (False, True)):
            yield KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=sk, num_warps=w, num_stages=st, swap_ab=sw)


def gpu_weights(spec, N: int, K: int) -> tuple[dict, torch.Tensor, int]:
    """Synthetic stored tensors of (spec, N, K) on the GPU, their float16 dequantization and their byte count."""
    qt = synthetic_quantized(spec, N, K)
    t = {k: v.cuda() for k, v in qt.tensors.items()}
    return t, ir.dequantize(qt, device="cuda").half(), sum(v.numel() * v.element_size() for v in t.values())


def _db_configs(spec, N: int, K: int, M: int) -> list[KernelConfig]:
    from autotune.db import db_path, load
    from runtime.tuning import entry_key, m_bucket
    data = load(db_path(torch.cuda.get_device_name())) or {}
    e = data.get("entries", {}).get(entry_key(spec.key, "triton", N, K, m_bucket(M)))
    return [KernelConfig(**e["config"])] if e else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("format")
    p.add_argument("-o", "--option", action="append")
    p.add_argument("--shapes", nargs="+", type=_shape, default=[(4096, 4096)])
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--configs", nargs="+", type=KernelConfig.from_label,
                   help="config labels to time instead of the grid (m16n64k128s4w4p3t: t swap_ab, r96 maxnreg, e evict_first, f reg_prefetch, h half_dot)")
    p.add_argument("--from-db", action="store_true", help="also time the database's config for each case")
    p.add_argument("--evict", action="store_true",
                   help="also time each candidate with evict_first (label suffix e): the weight stream's loads hinted")
    p.add_argument("--json", help="write every timed row to this JSON file")
    args = p.parse_args(argv)
    rows = []
    spec = ir.get_format(args.format, **_options(args.option))
    arch = arch_of_capability(*torch.cuda.get_device_capability())
    for N, K in args.shapes:
        t, W, stored = gpu_weights(spec, N, K)
        for M in args.batches:
            x = torch.randn(M, K, device="cuda").half()
            ref = reference(spec, t, W.double(), x).float()   # activation quantization modelled where present
            out = torch.empty(M, N, device="cuda", dtype=torch.float16)
            nbytes = stored + 2 * M * (N + K)
            floor, _ = read_floor_us(nbytes)
            fp16 = time_us(lambda: torch.nn.functional.linear(x, W))
            dflt = default_config(spec, (M, N, K), arch)
            res = []
            cands = [dflt] + (_db_configs(spec, N, K, M) if args.from_db else [])
            gemv = kernel_family(M) == "gemv"
            cands += [c for c in (args.configs if args.configs else grid(M, K)) if (c.block_m <= 4) == gemv]
            if args.evict:
                cands += [dataclasses.replace(c, evict_first=True) for c in cands]
            for cfg in dict.fromkeys(cands):
                try:
                    mod = get_kernel(spec, M, N, K, arch, cfg)
                    out.fill_(float("nan"))
                    mod.run(x, t, N, out=out)
                    err = ((out.float() - ref).norm() / ref.norm()).item()
                    if not err < 5e-3:
                        res.append((float("inf"), cfg.label, f"WRONG {err:.1e}"))
                        continue
                    res.append((time_us(lambda: mod.run(x, t, N, out=out), rep_ms=40), cfg.label, ""))
                except (SpecError, Exception) as e:  # illegal or failing configs are reported, not fatal
                    res.append((float("inf"), cfg.label, f"{type(e).__name__}: {str(e)[:80]}"))
            rows += [{"format": spec.name, "N": N, "K": K, "M": M, "config": label, "us": us, "note": note,
                      "fp16_us": fp16, "floor_us": floor, "bytes": nbytes, "default": label == dflt.label}
                     for us, label, note in res]
            res_sorted = sorted(res)
            d = next(r for r in res if r[1] == dflt.label)
            print(f"\n{spec.name} N={N} K={K} M={M}: {nbytes/1e6:.1f} MB, read floor {floor:.1f} us, fp16 cuBLAS {fp16:.1f} us, "
                  f"default {dflt.label} {d[0]:.1f} us")
            for us, label, note in res_sorted[: args.top]:
                print(f"  {label:28s} {us:8.1f} us  {nbytes / us / 1e6:5.2f} TB/s  {floor / us:5.0%} of floor  "
                      f"{fp16 / us:5.2f}x fp16 {note}")
            bad = [r for r in res if r[2].startswith("WRONG")]
            if bad:
                print(f"  WRONG results: {[b[1] for b in bad][:5]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
