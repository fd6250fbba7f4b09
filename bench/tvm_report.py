"""The TVM-on-GPU table (bench/results/<gpu>/tvm.md) from `bench.tvm_gpu_check` row files and a bench results.json.

python -m bench.tvm_report ROWS.json [ROWS.json ...] --results results.json --out tvm.md

Rows of later files replace earlier ones for the same (format, N, K, M). The Triton column is the current
Triton kernel's time from the bench results (tuned config where the database has one), measured in another run
on the same GPU; the TVM and fp16 cuBLAS columns come from the same run as each other."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _rows(paths: list[str]) -> dict:
    rows = {}
    for p in paths:
        data = json.loads(Path(p).read_text())
        for r in data["rows"] if isinstance(data, dict) else data:
            rows[(r["format"], r["N"], r["K"], r["M"])] = r
    return rows


def _triton_times(path: str | None) -> dict:
    if not path:
        return {}
    cases = json.loads(Path(path).read_text())["cases"]
    return {(c["name"], c["N"], c["K"], c["M"]): c["us"] for c in cases
            if c.get("kind") == "quantcc" and c.get("status") == "ok" and c.get("us")}


def render(rows: dict, triton: dict) -> str:
    ok = sum(1 for r in rows.values() if r.get("ok_f16") and r.get("ok_bf16"))
    fmts = sorted({k[0] for k in rows})
    out = [f"{ok}/{len(rows)} cases correct (fp16 and bf16, NaN-prefilled output), {len(fmts)} formats.", "",
           "| format | N x K | M | err fp16 | err bf16 | TVM us | Triton us (results.md) | fp16 cuBLAS us | TVM / Triton |",
           "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(rows, key=lambda k: (k[0], k[1] * k[2], k[3])):
        r = rows[key]
        fmt, N, K, M = key
        if "error" in r:
            out.append(f"| {fmt} | {N}x{K} | {M} | error: {r['error'][:80]} | | | | | |")
            continue
        t = triton.get(key)
        ratio = f"{r['tvm_us'] / t:.2f}" if t else "-"
        flag = "" if r["ok_f16"] and r["ok_bf16"] else " WRONG"
        out.append(f"| {fmt} | {N}x{K} | {M} | {r['rel_err_f16']:.1e}{flag} | {r['rel_err_bf16']:.1e} | "
                   f"{r['tvm_us']:.1f} | {f'{t:.1f}' if t else '-'} | {r['fp16_us']:.1f} | {ratio} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rows", nargs="+")
    p.add_argument("--results", help="bench results.json for the Triton column")
    p.add_argument("--header", help="a markdown file whose text goes above the table")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    head = Path(a.header).read_text() if a.header else ""
    Path(a.out).write_text(head + render(_rows(a.rows), _triton_times(a.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
