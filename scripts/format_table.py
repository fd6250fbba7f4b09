"""Print every registered format with its effective bits per weight and RTN error on Gaussian weights.

python scripts/format_table.py [--N 256 --K 1024]   (CPU; the K-quant, k-means and trellis encoders are slow)"""
import argparse
import time

import torch

import ir


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--N", type=int, default=256)
    p.add_argument("--K", type=int, default=1024)
    p.add_argument("formats", nargs="*")
    a = p.parse_args()
    print("| format | decode | bits/weight (4096x4096) | rel. error ||W-Wq||/||W|| (Gaussian) | encode s |")
    print("|---|---|---|---|---|")
    for name in a.formats or ir.list_formats():
        spec = ir.get_format(name)
        N = -(-a.N // spec.n_multiple) * spec.n_multiple
        K = -(-a.K // spec.k_multiple) * spec.k_multiple
        W = torch.randn(N, K, generator=torch.Generator().manual_seed(0)) * 0.02
        t = time.time()
        try:
            qt = ir.quantize(spec, W)
            err = ((ir.dequantize(qt) - W).norm() / W.norm()).item()
            note = ""
            if spec.act_quant is not None or any(tr.placement == "online" for tr in spec.transforms):
                note = " (weight in the kernel's basis)"
            print(f"| {name} | {spec.decode.kind} | {spec.bits_per_weight(4096, 4096):.3f} | {err:.4f}{note} | "
                  f"{time.time() - t:.1f} |", flush=True)
        except Exception as e:  # report, keep going
            print(f"| {name} | {spec.decode.kind} | {spec.bits_per_weight(4096, 4096):.3f} | error: {e} | |", flush=True)


if __name__ == "__main__":
    main()
