"""How fast the gemv family's weight access pattern can be read, without any decode: the read floor of a layout.

The M=1 gemv kernels read a packed weight matrix [R, C] of int32 words (gptq/int4: R = K / 8 word rows, C = N
columns, row-major) as tiles of [BLOCK_R, BLOCK_C] words: program (n, s) walks its column strip down the rows of
its split-K slice, so each tile row is one BLOCK_C * 4-byte segment, rows N * 4 bytes apart. This module times the
same bytes read three ways, in one run, by kernels that only load and sum (no decode, no x):

  stream   the read floor's pattern (bench.read_floor): consecutive blocks, a persistent grid;
  strip    the gemv pattern above, for several tile widths, splits and warps;
  packed   the gemv grid and tile order over a tile-contiguous layout (each [BLOCK_R, BLOCK_C] tile stored as one
           run of BLOCK_R * BLOCK_C words, a strip's tiles in a row): what a load-time device layout would give.

If strip tops out below stream while packed reaches it, the access pattern, not the decode, bounds the gemv;
`python -m bench.access_pattern --rows 3584 --cols 8192` (the int4 qweight of 8192 x 28672) prints the table.
"""
from __future__ import annotations

import argparse
import itertools
import json

import torch
import triton
import triton.language as tl

from .read_floor import read_floor_us
from .timing import time_us


@triton.jit
def _strip_sum(src_ptr, out_ptr, R, C, ITERS, PACKED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_s = tl.program_id(1)
    r0 = pid_s * ITERS * BLOCK_R
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.int32)
    rr = tl.arange(0, BLOCK_R)[:, None]
    cc = tl.arange(0, BLOCK_C)[None, :]
    for it in range(ITERS):
        rows = r0 + it * BLOCK_R + rr
        if PACKED:   # tile (row tile t, column strip c) at ((c * R / BLOCK_R) + t) * BLOCK_R * BLOCK_C, row-major inside
            tile = pid_c * (R // BLOCK_R) + (r0 // BLOCK_R + it)
            ptrs = src_ptr + tile.to(tl.int64) * (BLOCK_R * BLOCK_C) + rr * BLOCK_C + cc
        else:
            ptrs = src_ptr + rows.to(tl.int64) * C + pid_c * BLOCK_C + cc
        acc += tl.load(ptrs, mask=rows < R, other=0)
    tl.store(out_ptr + pid_s * tl.num_programs(0) + pid_c, tl.sum(tl.sum(acc, axis=1), axis=0))


def _time(src, R, C, packed, block_r, block_c, split, warps) -> float:
    iters = triton.cdiv(R, split * block_r)
    grid = (C // block_c, split)
    out = torch.empty(grid[0] * grid[1], dtype=torch.int32, device=src.device)
    return time_us(lambda: _strip_sum[grid](src, out, R, C, iters, PACKED=packed, BLOCK_R=block_r,
                                             BLOCK_C=block_c, num_warps=warps), rep_ms=40)


def run(R: int, C: int) -> list[dict]:
    src = torch.randint(-2 ** 31, 2 ** 31 - 1, (R, C), dtype=torch.int32, device="cuda")
    nbytes = src.numel() * 4
    floor, floor_cfg = read_floor_us(nbytes)
    rows = [{"pattern": "stream", "config": json.dumps(floor_cfg), "us": floor}]
    for packed, (block_r, block_c), split, warps in itertools.product(
            (False, True), ((16, 64), (16, 128), (8, 128), (32, 64), (16, 32)), (4, 8, 16), (2, 4)):
        if R % (block_r * split) or C % block_c:
            continue
        us = _time(src, R, C, packed, block_r, block_c, split, warps)
        rows.append({"pattern": "packed" if packed else "strip",
                     "config": f"r{block_r}c{block_c}s{split}w{warps}", "us": us})
    for r in rows:
        r["TB/s"] = nbytes / r["us"] / 1e6
        r["of floor"] = floor / r["us"]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=3584, help="word rows R (int4: K / 8)")
    p.add_argument("--cols", type=int, default=8192, help="columns C (N)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    rows = run(args.rows, args.cols)
    best = {}
    for r in rows:
        if r["pattern"] not in best or r["us"] < best[r["pattern"]]["us"]:
            best[r["pattern"]] = r
    print(f"{args.rows} x {args.cols} int32 words ({args.rows * args.cols * 4 / 1e6:.1f} MB)")
    for r in sorted(rows, key=lambda r: (r["pattern"], r["us"]))[:]:
        print(f"  {r['pattern']:7s} {r['config']:44s} {r['us']:8.1f} us  {r['TB/s']:5.2f} TB/s  {r['of floor']:5.0%}")
    print("best: " + ", ".join(f"{k} {v['us']:.1f} us ({v['of floor']:.0%}) {v['config']}" for k, v in best.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
