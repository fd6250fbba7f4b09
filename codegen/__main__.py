"""python -m codegen {list, show, build}: the quantcc compiler's command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ir
from ir import SpecError

from .arch import ARCHES, default_config
from .artifacts import BACKENDS, DEFAULT_BATCHES, DEFAULT_SHAPES, build
from .plan import lower


def _parse_value(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def _options(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or ():
        if "=" not in p:
            raise SpecError(f"option {p!r} is malformed; expected NAME=VALUE, e.g. -o bits=4")
        k, v = p.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def _shape(s: str) -> tuple[int, int]:
    try:
        n, k = (int(v) for v in s.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {s!r} is malformed; expected N,K (e.g. 4096,4096)") from None
    return n, k


def cmd_list(args) -> int:
    rows = []
    for name in ir.list_formats():
        spec = ir.get_format(name)
        rows.append((name, f"{spec.bits_per_weight(4096, 4096):.3f}", spec.decode.kind, ir.format_summary(name)))
    w = [max(len(r[i]) for r in rows + [("format", "bits/w", "decode", "")]) for i in range(3)]
    print(f"{'format':<{w[0]}}  {'bits/w':>{w[1]}}  {'decode':<{w[2]}}  summary (bits/w at 4096x4096, all stored tensors)")
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
    return 0


def cmd_show(args) -> int:
    spec = ir.get_format(args.format, **_options(args.option))
    N, K = args.shape
    schema = spec.tensor_schema(N, K)
    print(json.dumps({
        "spec": json.loads(spec.to_json()), "key": spec.key, "options": ir.format_options(args.format),
        "bits_per_weight": spec.bits_per_weight(N, K),
        "tensor_schema": {k: {"shape": list(s), "dtype": d} for k, (s, d) in schema.items()},
    }, indent=2, sort_keys=True))
    M = args.batch
    cfg = default_config(spec, (M, N, K), args.arch)
    plan = lower(spec, M, N, K, cfg, args.arch)
    print(f"# plan for M={M}, N={N}, K={K} on {args.arch}: {plan.name}")
    print(f"#   family {plan.family}, decode {plan.decode_template}, config {cfg.label}, "
          f"input transforms {[t['kind'] for t in plan.input_transforms]}, "
          f"output transforms {[t['kind'] for t in plan.output_transforms]}, act quant {plan.act_quant}")
    return 0


def cmd_build(args) -> int:
    spec = ir.get_format(args.format, **_options(args.option))
    out = Path(args.out or f"quantcc_out/{args.format}_{args.arch}")
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    for backend in backends:
        manifest = build(spec, args.arch, out, backend, args.shapes or DEFAULT_SHAPES, args.batches)
        for k in manifest["kernels"]:
            cases = ", ".join(f"M{c['M']}:{c['N']}x{c['K']}" for c in k["cases"])
            print(f"  {k['file']}  ({cases})")
    print(f"wrote {len(manifest['kernels'])} kernel(s) + manifest.json for {spec.name} "
          f"(key {spec.key[:12]}, {spec.bits_per_weight():.3f} bits/w) to {out}/")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m codegen", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every registered format with its bits per weight")
    s = sub.add_parser("show", help="a format's spec JSON, key, tensor schema and kernel plan")
    s.add_argument("format")
    s.add_argument("-o", "--option", action="append", help="format option NAME=VALUE (repeatable)")
    s.add_argument("--shape", type=_shape, default=(4096, 4096), help="N,K for the tensor schema")
    s.add_argument("--batch", type=int, default=1, help="M for the plan")
    s.add_argument("--arch", default="sm90", choices=sorted(ARCHES))
    b = sub.add_parser("build", help="write standalone kernels and manifest.json")
    b.add_argument("format")
    b.add_argument("-o", "--option", action="append", help="format option NAME=VALUE (repeatable)")
    b.add_argument("--arch", default="sm90", choices=sorted(ARCHES))
    b.add_argument("--backend", default="triton", choices=list(BACKENDS) + ["tvm", "all"])
    b.add_argument("--out", help="output folder (default quantcc_out/<format>_<arch>)")
    b.add_argument("--shapes", type=_shape, nargs="+", help="N,K problem shapes (default 4096,4096)")
    b.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES), help="M values")
    a = sub.add_parser("sass", help="compile one kernel for an arch (no GPU needed): registers, spills, "
                                    "shared memory, occupancy, SASS instruction mix")
    a.add_argument("format")
    a.add_argument("-o", "--option", action="append", help="format option NAME=VALUE (repeatable)")
    a.add_argument("--shape", type=_shape, default=(4096, 4096), help="N,K")
    a.add_argument("--batch", type=int, default=1, help="M")
    a.add_argument("--arch", default="sm90", choices=sorted(ARCHES))
    a.add_argument("--config", help='tile config as JSON (default: the arch heuristic), e.g. '
                                    '\'{"block_m": 1, "block_n": 128, "block_k": 128, "split_k": 4, "num_warps": 4, '
                                    '"num_stages": 2}\'')
    a.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    a.add_argument("--dump", help="write the kernel .py, .ttgir, .ptx and .sass into this folder")
    a.add_argument("--top", type=int, default=25, help="opcodes to list")
    args = p.parse_args(argv)
    if args.cmd == "sass":
        from . import sass
        args.options = _options(args.option)
        try:
            return sass.main(args)
        except SpecError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        return {"list": cmd_list, "show": cmd_show, "build": cmd_build}[args.cmd](args)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
