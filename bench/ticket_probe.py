"""Split-K ticket experiment: what the per-call `torch.zeros(tickets)` costs under CUDA-graph replay.

A split-K kernel today zeroes its ticket counters on every call, which puts a memset node in front of the kernel
in the graph. The variant timed here keeps one zeroed ticket buffer per (device, stream) and has the last program
of each output tile put its ticket back to 0, so a call is a single kernel node. Both variants are the generated
kernel for the database's config (the second one text-patched in this process only), checked against the
reference on three calls in a row (a ticket left dirty would show on the second), and timed in the same run.

python -m bench.ticket_probe gptq --shapes 4096,4096 8192,28672 --batches 1 16 [--json OUT]"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

import ir
from codegen.__main__ import _shape
from codegen.arch import arch_of_capability, default_config
from codegen.plan import lower
from codegen.triton_backend import render_triton
from runtime.loader import load_kernel_module

from .probe import _db_configs, gpu_weights
from .read_floor import read_floor_us
from .timing import time_us

_ZEROS = "tickets = torch.zeros(grid[0] * grid[2], device=x.device, dtype=torch.int32)"
_LAST = "            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=y_mask)\n"
_HELPER = '''

_TICKET_BUFFERS = {}


def _tickets(device, n):
    """Zeroed split-K tickets kept per (device, stream); the kernel's last program per tile resets its ticket."""
    key = (device, torch.cuda.current_stream(device).cuda_stream)
    buf = _TICKET_BUFFERS.get(key)
    if buf is None or buf.numel() < n:
        buf = _TICKET_BUFFERS[key] = torch.zeros(max(n, 1024), device=device, dtype=torch.int32)
    return buf
'''


def self_resetting(src: str) -> str:
    """The generated source with persistent, self-resetting tickets (raises if the source has no split-K path)."""
    if src.count(_ZEROS) != 1 or src.count(_LAST) != 1:
        raise ValueError("the generated source does not have the expected split-K ticket code")
    src = src.replace(_LAST, _LAST + "            tl.store(tickets_ptr + tile, 0)  # ready for the next call\n")
    src = src.replace(_ZEROS, "tickets = _tickets(x.device, grid[0] * grid[2])")
    head, sep, tail = src.partition("\n\ndef run(")
    return head + _HELPER + sep + tail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ticket_probe")
    p.add_argument("formats", nargs="+")
    p.add_argument("--shapes", nargs="+", type=_shape, default=[(4096, 4096)])
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--json")
    args = p.parse_args(argv)
    arch = arch_of_capability(*torch.cuda.get_device_capability())
    rows, tmp = [], Path(tempfile.mkdtemp(prefix="ticket_probe_"))
    for name in args.formats:
        spec = ir.get_format(name)
        for N, K in args.shapes:
            t, W, stored = gpu_weights(spec, N, K)
            for M in args.batches:
                cfg = (_db_configs(spec, N, K, M) or [default_config(spec, (M, N, K), arch)])[0]
                if cfg.split_k == 1:
                    print(f"{name} {N}x{K} M={M}: {cfg.label} has no split-K; skipped")
                    continue
                src = render_triton(lower(spec, M, N, K, cfg, arch))
                mods = {}
                for variant, text in (("memset", src), ("reset", self_resetting(src))):
                    path = tmp / f"{variant}_{name}_{N}x{K}_m{M}.py"
                    path.write_text(text)
                    mods[variant] = load_kernel_module(path)
                x = torch.randn(M, K, device="cuda").half()
                ref = x.float() @ W.float().T
                out = torch.empty(M, N, device="cuda", dtype=torch.float16)
                nbytes = stored + 2 * M * (N + K)
                floor, _ = read_floor_us(nbytes)
                row = {"format": name, "N": N, "K": K, "M": M, "config": cfg.label, "floor_us": floor}
                for variant, mod in mods.items():
                    errs = []
                    for _ in range(3):
                        out.fill_(float("nan"))
                        mod.run(x, t, N, out=out)
                        errs.append(((out.float() - ref).norm() / ref.norm()).item())
                    ok = all(e < 5e-3 for e in errs)
                    row[variant] = time_us(lambda: mod.run(x, t, N, out=out), rep_ms=60) if ok else float("inf")
                    row[variant + "_err"] = max(errs)
                rows.append(row)
                print(f"{name:16s} {N:>6d}x{K:<6d} M={M:<4d} {cfg.label:24s} memset {row['memset']:7.2f} us  "
                      f"reset {row['reset']:7.2f} us  ({row['memset'] - row['reset']:+.2f} us, "
                      f"floor {floor:.1f} us: {floor / row['memset']:.0%} -> {floor / row['reset']:.0%})  "
                      f"err {row['memset_err']:.1e}/{row['reset_err']:.1e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
