"""python -m bench layers: a Llama-3-8B decoder stack's linear layers, quantized, timed eager and graph-replayed.

    python -m bench layers [--formats F ...] [--batches M ...] [--layers L] [--hidden H --kv KV --inter I]
                           [--heads H --kv-heads KVH] [--iters N] [--compile] [--jobs J] [--out DIR]

What it answers (issue 6): how much of a model forward is launch overhead, per format, next to fp16 nn.Linear.

The stack: L decoder layers with Llama-3-8B's linears (hidden 4096, k/v 1024, intermediate 14336, 32 query and 8
key/value heads, no bias), seven linears per layer, 7L per forward; x is (M, hidden) fp16:
    h = rms_norm(x) * g;  x = x + o_proj(attention(q_proj(h), k_proj(h), v_proj(h)))
    h = rms_norm(x) * g;  x = x + down_proj(silu(gate_proj(h)) * up_proj(h))
attention is torch's scaled_dot_product_attention over the M rows as one causal sequence (a prefill chunk of M
tokens with no KV cache; at M=1 it returns v, so q_proj and k_proj reach the output only for M > 1: the
per-linear check below covers them at every M). Everything but the linears is the same torch code in every
stack, so stacks differ only in their linears. Each norm weight g (one value per norm) is calibrated on the
float32 reference so that its block adds an update of rms 1 to the residual (`calibrate`), which keeps fp16
activations sane whatever the synthetic weights' scale and mean.

Quantized stacks: every linear is QuantLinear.from_quantized of synthetic stored tensors (ir.synthetic: valid
random codes, fast at real shapes) with a distinct seed per layer, so no layer finds another's weights in L2.
The fp16 stack: nn.Linear, weights N(0, 0.02), timed once per M.

Per (format, M), in this order:
1. correctness, before any timing: one forward with hooks on every linear; each linear's output is compared with
   its own input @ W^T in float32, W from the reference decoder (tolerance LINEAR_TOL), and the stack's output
   with the same stack run in float32 on the decoded weights (tolerance STACK_TOL, or FLOOR_FACTOR x the `fp16
   floor`: the error of the same decoded weights run as fp16 nn.Linear, the best an fp16 stack can do). A
   failure is FAILED, names the layer, is not timed, and makes the exit status 1. On CUDA a linear that would
   run the reference path (CPU decode every call) is an error, not timed.
2. eager: median over --iters forwards, each started from an idle GPU (synchronize; event; forward; event), so
   the time is what one step takes, launches included;
3. graph: the whole forward captured in one torch.cuda.CUDAGraph; its replay timed the same way;
4. with --compile: torch.compile(mode="reduce-overhead", fullgraph=True), timed the same way; a failure is
   recorded with its message.
Derived: speedup vs the fp16 stack (eager / eager, graph / graph); eager overhead per linear call, (eager -
graph) / 7L; and the part of it the quantized linears add over nn.Linear, ((eager - graph) - (fp16 eager - fp16
graph)) / 7L. No L2 flush: the stack streams more bytes than L2 holds.

Before timing, worker processes compile every (format, N, K, M bucket) kernel into Triton's cache and threads
draw the synthetic tensors; timing starts when both are done, so no compile competes with the CPU-bound eager
measurements.

Without CUDA (smoke test): QuantLinear runs its reference decode + matmul (the runtime's CPU path), the checks
run, every time is null and graph / compile are n/a. Small dims: --hidden 128 --kv 32 --inter 256 --layers 1.
`--corrupt NAME` swaps one linear's tensors for another draw after the reference is decoded: a self-test of the
correctness gate (it must fail). The stack, its calibration and the checks live in bench/layer_stack.py.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import ir

from .layer_stack import (
    FLOOR_FACTOR,
    LINEAR_TOL,
    LLAMA3_8B,
    STACK_TOL,
    QuantStack,
    check,
    fp16_stack,
    linear_shapes,
    rel_err,
    sample_x,
    synthesize,
)

DEFAULT_FORMATS = ["int4_g128_asym", "awq", "gguf_q4_0", "gguf_q4_k", "bnb_nf4", "eqat_w2g128"]
DEFAULT_BATCHES = [1, 16]
ROOT = Path(__file__).resolve().parent.parent


def median_us(fn, iters: int, warmup: int) -> float:
    """Median microseconds of fn() from an idle GPU: synchronize, record, call, record, per iteration."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return 1000.0 * statistics.median(times)


def time_stack(stack: nn.Module, x: torch.Tensor, ref: torch.Tensor | None, args) -> dict:
    """eager_us, graph_us (and graph_err against ref), and with --compile compile_us / compile_s."""
    from .timing import capture
    out = {}
    with torch.no_grad():
        out["eager_us"] = median_us(lambda: stack(x), args.iters, args.warmup)
        holder = {}
        g = capture(lambda: holder.__setitem__("y", stack(x)))
        out["graph_us"] = median_us(g.replay, args.iters, args.warmup)
        if ref is not None:
            g.replay()
            torch.cuda.synchronize()
            out["graph_err"] = rel_err(holder["y"], ref)
        del g
        holder.clear()
        if args.compile:
            out.update(time_compiled(stack, x, ref, args))
    return out


def time_compiled(stack: nn.Module, x: torch.Tensor, ref: torch.Tensor | None, args) -> dict:
    torch._dynamo.reset()
    t = time.time()
    try:
        cs = torch.compile(stack, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):  # compile, record the graph, replay
            y = cs(x)
        torch.cuda.synchronize()
        out = {"compile_s": round(time.time() - t, 1)}
        if ref is not None:
            out["compile_err"] = rel_err(y, ref)
        out["compile_us"] = median_us(lambda: cs(x), args.iters, args.warmup)
        return out
    except Exception as e:  # noqa: BLE001 - torch.compile's failure is a result, reported
        return {"compile_s": round(time.time() - t, 1), "compile_us": None,
                "compile_error": f"{type(e).__name__}: {str(e)[:400]}"}
    finally:
        torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ precompiling
def precompile(formats: list, d: dict, batches: list[int], jobs: int) -> list[str]:
    """Compile every (format, N, K, M bucket) kernel in `jobs` spawned workers (bench.run.precompile_group);
    returns their errors. The timing process then loads the kernels from Triton's cache."""
    from runtime.device import machine_header
    from runtime.tuning import m_bucket

    from .run import precompile_group
    header = machine_header()
    buckets = sorted({m_bucket(M) for M in batches})
    shapes = sorted(set(linear_shapes(d).values()))
    tasks = [(f, N, K, buckets, header["arch"], header) for f in formats for N, K in shapes]
    if jobs <= 0 or not tasks:
        return []
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(tasks))) as pool:
        return [e for errs in pool.imap_unordered(precompile_group, tasks) for e in errs]


# -------------------------------------------------------------------------------------------------- driver
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench layers", description=__doc__.split("\n\n")[0])
    p.add_argument("--formats", nargs="+", default=DEFAULT_FORMATS, help="registered format names")
    p.add_argument("--batches", nargs="+", type=int, default=DEFAULT_BATCHES, help="M values (rows of x)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers L (7 linears each)")
    for k, v in LLAMA3_8B.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=int, default=v, help=f"default {v} (Llama-3-8B)")
    p.add_argument("--iters", type=int, default=30, help="timed forwards per measurement (median)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help='also time torch.compile(mode="reduce-overhead")')
    p.add_argument("--jobs", type=int, default=None, help="kernel-compiling workers (default 8 on CUDA, 0 on CPU)")
    p.add_argument("--corrupt", default=None, help="self-test: swap this linear's tensors after the reference is "
                                                   "decoded (e.g. layers.0.mlp.down_proj); the gate must fail")
    p.add_argument("--out", default=None, help="output folder (default bench/results/<gpu slug>/)")
    p.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD; pass it "
                                                  "when the working copy's git metadata is not the code's)")
    args = p.parse_args(argv)
    args.formats = list(dict.fromkeys(args.formats))
    known = ir.list_formats()
    bad = [f for f in args.formats if f not in known]
    if bad:
        p.error(f"unknown formats {bad}; registered: {', '.join(known)}")
    if args.layers < 1 or args.iters < 1 or args.warmup < 0 or any(m < 1 for m in args.batches):
        p.error("--layers, --iters and --batches must be positive, --warmup not negative")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        p.error(f"--heads {args.heads} must divide --hidden {args.hidden}, and --kv-heads {args.kv_heads} --heads")
    if args.kv != args.kv_heads * (args.hidden // args.heads):
        p.error(f"--kv {args.kv} must be --kv-heads x head dim = {args.kv_heads * (args.hidden // args.heads)}")
    return args


def _header(cuda: bool, commit: str | None = None) -> dict:
    import triton

    from .run import _git_commit
    if cuda:
        from runtime.device import machine_header
        head = dict(machine_header())
    else:
        head = {"gpu": None, "device": "cpu: QuantLinear's reference path, correctness only, no timing",
                "torch": torch.__version__, "triton": triton.__version__}
    head["git_commit"] = commit or _git_commit()
    head["python"] = sys.version.split()[0]
    return head


def _legal(spec, d: dict) -> str | None:
    for N, K in sorted(set(linear_shapes(d).values())):
        try:
            spec.check_shape(N, K)
        except ir.SpecError as e:
            return f"{N}x{K} not legal for the format: {e}"
    return None


def run_format(name: str, qts: dict, fp16: dict, args, d: dict, device, cuda: bool) -> list[dict]:
    spec = ir.get_format(name)
    per = 7 * args.layers
    params = args.layers * sum(N * K for N, K in linear_shapes(d).values())
    base = {"format": name, "status": "ok", "reason": None}
    cases = [dict(base, M=M, bits_per_weight=spec.bits_per_weight(d["hidden"], d["hidden"])) for M in args.batches]
    why = _legal(spec, d)
    if why:
        return [dict(c, status="skipped", reason=why) for c in cases]
    try:
        qs = QuantStack(spec, d, args.layers, {n: f.result() for n, f in qts.items()}, device)
        if args.corrupt:
            qs.corrupt(args.corrupt)
    except Exception as e:  # noqa: BLE001 - a broken codec is a result, reported
        return [dict(c, status="error", reason=f"building: {type(e).__name__}: {str(e)[:300]}") for c in cases]
    for c in cases:
        M = c["M"]
        c.update(weight_bytes=qs.weight_bytes, bits_per_weight=8 * qs.weight_bytes / params)
        try:
            x = sample_x(M, d["hidden"], device)
            res = check(qs, x)
            res.pop("y")
            ref = res.pop("ref")
            c.update(res)
            if cuda:
                disp = {n: m.dispatch(M) for n, m in qs.stack.linears().items()}
                c["kernels"] = sorted({f"{v.kernel} ({v.source})" for v in disp.values() if v.kind == "triton"})
                slow = [f"{n}: {v.reason}" for n, v in disp.items() if v.kind != "triton"]
                if slow and c["status"] == "ok":
                    c.update(status="error", reason="reference path on CUDA (not timed): " + "; ".join(slow[:3]))
            if c["status"] != "ok" or not cuda:
                continue
            c.update(time_stack(qs.stack, x, ref, args))
            tol = max(STACK_TOL, FLOOR_FACTOR * c["fp16_floor_err"])
            for mode in ("graph", "compile"):
                if c.get(f"{mode}_err") is not None and not c[f"{mode}_err"] <= tol:
                    c.update(status="FAILED", reason=f"{mode} output rel err {c[f'{mode}_err']:.2e} > {tol:.1e}")
            c["overhead_per_linear_us"] = (c["eager_us"] - c["graph_us"]) / per
            c["graph_tbps"] = qs.weight_bytes / c["graph_us"] / 1e6
            f = fp16[M]
            if f.get("graph_us"):
                c["speedup_eager"] = f["eager_us"] / c["eager_us"]
                c["speedup_graph"] = f["graph_us"] / c["graph_us"]
                c["extra_overhead_per_linear_us"] = c["overhead_per_linear_us"] - f["overhead_per_linear_us"]
            if c.get("compile_us") and f.get("compile_us"):
                c["speedup_compile"] = f["compile_us"] / c["compile_us"]
        except Exception as e:  # noqa: BLE001 - a failing case is a result, reported, never hidden
            c.update(status="error", reason=f"{type(e).__name__}: {str(e)[:300]}")
        finally:
            if cuda:
                torch.cuda.synchronize()
    del qs
    if cuda:
        torch.cuda.empty_cache()
    return cases


def run_fp16(args, d: dict, device, cuda: bool) -> dict:
    """{M: case} for the fp16 nn.Linear stack (times only on CUDA)."""
    per = 7 * args.layers
    stack = fp16_stack(d, args.layers, device)
    bytes_ = sum(m.weight.numel() * 2 for m in stack.linears().values())
    out = {}
    for M in args.batches:
        c = {"format": "fp16 nn.Linear", "M": M, "bits_per_weight": 16.0, "status": "ok", "reason": None,
             "weight_bytes": bytes_}
        if cuda:
            try:
                c.update(time_stack(stack, sample_x(M, d["hidden"], device), None, args))
                c["overhead_per_linear_us"] = (c["eager_us"] - c["graph_us"]) / per
                c["graph_tbps"] = bytes_ / c["graph_us"] / 1e6
            except Exception as e:  # noqa: BLE001
                c.update(status="error", reason=f"{type(e).__name__}: {str(e)[:300]}")
        out[M] = c
    del stack
    if cuda:
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------------- output
COLUMNS = [("format", "format", "{}"), ("M", "M", "{}"), ("bits/w", "bits_per_weight", "{:.2f}"),
           ("lin err", "linear_err", "{:.1e}"), ("stack err", "stack_err", "{:.1e}"),
           ("fp16 floor", "fp16_floor_err", "{:.1e}"), ("eager us", "eager_us", "{:.0f}"),
           ("graph us", "graph_us", "{:.0f}"), ("compile us", "compile_us", "{:.0f}"),
           ("x fp16 eager", "speedup_eager", "{:.2f}"), ("x fp16 graph", "speedup_graph", "{:.2f}"),
           ("x fp16 compile", "speedup_compile", "{:.2f}"), ("graph TB/s", "graph_tbps", "{:.2f}"),
           ("ovh/linear us", "overhead_per_linear_us", "{:.1f}"),
           ("extra ovh/linear us", "extra_overhead_per_linear_us", "{:.1f}"), ("status", "status", "{}")]


def _cell(c: dict, key: str, fmt: str, cuda: bool, compiled: bool) -> str:
    v = c.get(key)
    if v is not None:
        return fmt.format(v)
    if c["status"] == "ok" and ((not cuda and key in ("graph_us", "compile_us")) or
                                (not compiled and "compile" in key)):
        return "n/a"
    return "-"


def table(rows: list[dict], cuda: bool, compiled: bool) -> list[list[str]]:
    cols = [c for c in COLUMNS if compiled or "compile" not in c[1]]
    return [[h for h, _, _ in cols]] + [[_cell(r, k, f, cuda, compiled) for _, k, f in cols] for r in rows]


def render_markdown(doc: dict) -> str:
    h, run = doc["header"], doc["run"]
    keys = ("gpu", "capability", "driver", "cuda", "torch", "triton", "quantcc", "template_hash", "git_commit")
    lines = [f"# quantcc layer stack: {h.get('gpu') or 'CPU (reference path, no timing)'}", "",
             "Machine: " + ", ".join(f"{k} `{h[k]}`" for k in keys if h.get(k) is not None) + ".",
             f"Run: `python -m bench layers {' '.join(run['argv'])}`, started {run['started']}, {run['elapsed_s']} s.",
             "", f"Stack: {run['layers']} Llama decoder layers' linears ({run['dims']}), {7 * run['layers']} linears "
             "per forward, glue (rms_norm, causal GQA attention over the M rows, SiLU*mul, residual adds) in fp16 "
             "torch. Times: median microseconds per whole-stack forward from an idle GPU (CUDA events); eager = "
             "Python dispatch; graph = one CUDA graph of the forward, replayed; compile = torch.compile "
             "reduce-overhead. `x fp16` = fp16 nn.Linear stack time / this time, same mode. `ovh/linear` = (eager - "
             "graph) / linears; `extra ovh/linear` = the part over fp16 nn.Linear's. Errors: `lin err` worst linear "
             "vs input @ W^T (float32, decoded W), `stack err` the output vs the float32 stack on decoded weights, "
             "`fp16 floor` the same weights as fp16 nn.Linear. See bench/layers.py.", ""]
    if not h.get("gpu"):
        lines += ["**No timing**: no CUDA device; QuantLinear ran its reference path and only correctness was "
                  "checked. graph / compile: n/a.", ""]
    rows = table(doc["fp16"] + doc["cases"], bool(h.get("gpu")), run["compile"])
    lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    notes = [c for c in doc["fp16"] + doc["cases"] if c.get("reason") or c.get("compile_error")]
    if notes:
        lines += ["", "Notes:"]
        lines += [f"- {c['format']} M={c['M']}: {c.get('reason') or ''} {c.get('compile_error') or ''}".rstrip()
                  for c in notes]
    return "\n".join(lines) + "\n"


def print_table(rows: list[list[str]]) -> None:
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(s.rjust(w[i]) if i else s.ljust(w[i]) for i, s in enumerate(r)), flush=True)


def main(argv=None) -> int:
    from .report import _atomic_write, gpu_slug
    args = parse_args(argv)
    t0 = time.time()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    d = {k: getattr(args, k) for k in LLAMA3_8B}
    header = _header(cuda, args.commit)
    out_dir = Path(args.out) if args.out else ROOT / "bench" / "results" / gpu_slug(header)
    if not cuda:
        print("bench layers: no CUDA device: QuantLinear runs its reference path; correctness only, no timing.",
              flush=True)
    specs = {f: ir.get_format(f) for f in args.formats}
    legal = [f for f in args.formats if _legal(specs[f], d) is None]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:  # draws tensors while kernels compile
        qts = {f: synthesize(specs[f], d, args.layers, pool) for f in legal}
        jobs = args.jobs if args.jobs is not None else (8 if cuda else 0)
        errors = precompile(legal, d, args.batches, jobs) if cuda else []
        concurrent.futures.wait([fut for fs in qts.values() for fut in fs.values()])
    for e in errors:
        print(f"bench layers: precompile: {e}", flush=True)
    print(f"bench layers: {len(args.formats)} formats x M {args.batches}, L={args.layers}, dims {d}; compiled and "
          f"synthesized in {time.time() - t0:.0f} s", flush=True)
    fp16 = run_fp16(args, d, device, cuda)
    cases = []
    for f in args.formats:
        group = run_format(f, qts.pop(f, {}), fp16, args, d, device, cuda)
        for c in group:
            print(f"bench layers: {f} M={c['M']}: {c['status']}" + (f": {c['reason']}" if c["reason"] else "")
                  + (f" (compile: {c['compile_error'][:120]})" if c.get("compile_error") else ""), flush=True)
        cases.extend(group)
    run = {"argv": sys.argv[1:] if argv is None else list(argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z",
           time.localtime(t0)), "elapsed_s": round(time.time() - t0, 1), "layers": args.layers, "dims": d,
           "batches": args.batches, "compile": args.compile, "linear_tol": LINEAR_TOL, "stack_tol": STACK_TOL,
           "floor_factor": FLOOR_FACTOR}
    doc = {"schema": "layers-1", "header": header, "run": run, "fp16": list(fp16.values()), "cases": cases}
    _atomic_write(out_dir / "layers.json", json.dumps(doc, indent=1, default=str) + "\n")
    _atomic_write(out_dir / "layers.md", render_markdown(doc))
    bad = [c for c in cases if c["status"] in ("FAILED", "error")]
    print(f"bench layers: {len(cases)} cases in {run['elapsed_s']} s -> {out_dir}/layers.json"
          + (f"; {len(bad)} FAILED or errored" if bad else ""), flush=True)
    print_table(table(doc["fp16"] + cases, cuda, args.compile))
    return 1 if bad else 0
