"""python -m bench run: quantcc kernels next to fp16 cuBLAS, the read floor and the peers, in one run.

    python -m bench run [--formats F ...] [--shapes N,K ...] [--batches M ...] [--backend triton|tvm]
                        [--peers P ...|none] [--shard I/N] [--time-budget S] [--out DIR] [--no-plots]

Per case (format x shape x M), in this order:
1. the kernel config: the tuned one from autotune/db/<gpu>.json when it has an entry (`config_source` "db"
   or "db-stale"), else codegen.arch.default_config ("default");
2. correctness before any timing: valid synthetic stored tensors (ir.synthetic, decoded once per format and
   shape on the GPU by ir.dequantize(device=...), kept across M), a NaN-prefilled output, the error against
   x @ W^T in float64 (with the format's activation quantization applied to x); a wrong result is FAILED
   and not timed;
3. the median time (CUDA-graph replay, L2 flushed: bench.timing.time_us) and the eager time per call;
4. the bytes the kernel must read (stored tensors + x + y), the achieved TB/s, the read floor for those
   bytes measured in the same run (bench.read_floor: a swept streaming-read kernel) and the fraction of it,
   and the ratio to fp16 cuBLAS (F.linear) measured in the same run.
Peers (bench.peers) get the same treatment on the same shapes; missing peers are reported as skipped.

Without CUDA the kernels run under TRITON_INTERPRET=1 at whatever (small) shapes are given: correctness is
checked, and every time is recorded as null, since no timing means anything there.

Sharding: `--shard I/N` runs every N-th format or peer (from the I-th), at every shape; each slice measures
its own fp16 cuBLAS and read floor. `python -m bench merge` joins the slices' results.json.
`--time-budget S` starts no new group after S seconds (the rest is recorded as not run) so a call always
writes its results; `--skip-done A.json ...` skips the groups those files already hold."""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import math
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch

import ir
from ir.synthetic import synthetic_quantized

from .peers import PEERS, PeerSkip, get_peer
from .report import format_class, gpu_slug, write_outputs

DEFAULT_SHAPES = [(4096, 4096), (14336, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]
DEFAULT_BATCHES = [1, 16, 128]
# tolerance on ||y - ref|| / ||ref||: fp16 outputs keep ~11 bits; bf16 ~8
REL_TOL = {torch.float16: 5e-3, torch.bfloat16: 2e-2}
ROOT = Path(__file__).resolve().parent.parent


def _shape(s: str) -> tuple[int, int]:
    try:
        n, k = s.lower().replace("x", ",").split(",")
        return int(n), int(k)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {s!r} is invalid; expected N,K or NxK (e.g. 4096,4096)") from None


def _shard(s: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in s.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {s!r} is invalid; expected I/N with 1 <= I <= N") from None
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"--shard {s!r} is invalid; expected I/N with 1 <= I <= N")
    return i, n


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench run", description=__doc__.split("\n\n")[0])
    p.add_argument("--formats", nargs="+", default=None, help="registered format names (default: all)")
    p.add_argument("--shapes", nargs="+", type=_shape, default=None,
                   help="N,K shapes (default: the five LLM shapes on CUDA)")
    p.add_argument("--batches", nargs="+", type=int, default=DEFAULT_BATCHES, help="M values")
    p.add_argument("--backend", choices=("triton", "tvm"), default="triton")
    p.add_argument("--tvm-dir", default=None, help="with --backend tvm: folder of `codegen build --backend tvm` "
                                                   "outputs, one subfolder per format (<format>_<arch> or <format>)")
    p.add_argument("--peers", nargs="+", default=None, help=f"peers to run (default: all: {', '.join(PEERS)}); 'none'")
    p.add_argument("--shard", type=_shard, default=(1, 1), help="I/N: run the I-th of N slices")
    p.add_argument("--time-budget", type=float, default=None, help="seconds after which no new group starts")
    p.add_argument("--skip-done", nargs="+", default=[], help="results.json files whose groups are skipped")
    p.add_argument("--out", default=None, help="output folder (default bench/results/<gpu slug>/)")
    p.add_argument("--no-plots", action="store_true", help="write results.json and results.md only")
    p.add_argument("--rep-ms", type=int, default=40, help="do_bench repetition time per measurement")
    p.add_argument("--eager-iters", type=int, default=20)
    p.add_argument("--jobs", type=int, default=None, help="worker processes compiling the shard's kernels ahead "
                                                         "of the timing loop (default: 8 on CUDA, 0 on the CPU)")
    p.add_argument("--no-prefetch", action="store_true", help="do not synthesize the next group's tensors in a "
                                                                "background thread while this one is timed")
    p.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD)")
    p.add_argument("--slow-down", type=int, default=1, help="run each quantcc kernel this many times per call "
                                                           "(a deliberately slowed kernel, to test `bench compare`)")
    args = p.parse_args(argv)
    known = ir.list_formats()
    args.formats = args.formats or known
    bad = [f for f in args.formats if f not in known]
    if bad:
        p.error(f"unknown formats {bad}; registered: {', '.join(known)}")
    if args.peers is None:
        args.peers = list(PEERS)
    elif args.peers == ["none"]:
        args.peers = []
    bad = [x for x in args.peers if x not in PEERS]
    if bad:
        p.error(f"unknown peers {bad}; expected some of {', '.join(PEERS)} or 'none'")
    if any(m < 1 for m in args.batches):
        p.error("--batches must be positive")
    if args.backend == "tvm" and not args.tvm_dir:
        p.error("--backend tvm needs --tvm-dir (TVM kernels are built ahead: python -m codegen build --backend tvm)")
    return args


# ------------------------------------------------------------------------------------------- machine
def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine(args) -> dict:
    import triton
    if torch.cuda.is_available():
        from runtime.device import machine_header
        head = dict(machine_header())
        head["sms"] = torch.cuda.get_device_properties(0).multi_processor_count
    else:
        head = {"gpu": None, "device": "cpu (TRITON_INTERPRET=1): correctness only, no timing",
                "arch": "sm90", "torch": torch.__version__, "triton": triton.__version__}
    head["git_commit"] = args.commit or _git_commit()
    head["python"] = sys.version.split()[0]
    head["peers"] = {name: PEERS[name].version() for name in args.peers}
    return head


# --------------------------------------------------------------------------------------------- cases
def case_id(kind: str, name: str, backend: str, N: int, K: int, M: int) -> str:
    return f"{kind}:{name}|{backend}|{N}x{K}|M{M}"


def new_case(kind: str, name: str, backend: str, N: int, K: int, M: int, **fields) -> dict:
    c = {"id": case_id(kind, name, backend, N, K, M), "kind": kind, "name": name, "backend": backend,
         "N": N, "K": K, "M": M, "status": "ok", "reason": None, "rel_err": None, "max_rel_err": None,
         "us": None, "eager_us": None, "bytes": None, "tbps": None, "floor_us": None, "floor_frac": None,
         "fp16_us": None, "speedup_vs_fp16": None}
    c.update(fields)
    return c


def _seed(*parts) -> int:
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def _x(M: int, K: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(M, K, generator=g) * 0.5).to(device=device, dtype=torch.float16)


def check_output(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> dict:
    """rel_err = ||y - ref|| / ||ref||, max_rel_err = max|y - ref| / max|ref|, and the verdict."""
    y = y.to(torch.float64)
    nan = bool(torch.isnan(y).any())
    d = (y - ref).nan_to_num(nan=float("inf"))
    rel = (d.norm() / ref.norm().clamp_min(1e-30)).item()
    mx = (d.abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    ok = not nan and rel <= REL_TOL[dtype]
    out = {"rel_err": rel if math.isfinite(rel) else None, "max_rel_err": mx if math.isfinite(mx) else None}
    if not ok:
        out["status"] = "FAILED"
        out["reason"] = ("output left NaN (unwritten or overflow)" if nan else
                         f"rel err {rel:.2e} > tolerance {REL_TOL[dtype]:.0e}")
    return out


class Timer:
    """Times on CUDA (bench.timing); None everywhere on the CPU."""

    def __init__(self, cuda: bool, rep_ms: int, eager_iters: int):
        self.cuda, self.rep_ms, self.eager_iters = cuda, rep_ms, eager_iters

    def __call__(self, fn) -> tuple[float | None, float | None]:
        if not self.cuda:
            return None, None
        from .timing import time_eager_us, time_us
        return time_us(fn, rep_ms=self.rep_ms), time_eager_us(fn, iters=self.eager_iters)


class ReadFloor:
    """The read floor per byte count, measured in this run. read_floor_us sweeps the floor kernel's configs at
    anchor sizes (powers of 4 bytes, >= 1 MiB); each distinct byte count is then timed with the best configs of
    the two anchors around it and keeps the faster (a run measures a few sweeps plus two short measurements per
    byte count; one anchor's winner alone was up to a few % off at sizes between anchors)."""

    def __init__(self, cuda: bool, rep_ms: int):
        self.cuda, self.rep_ms = cuda, rep_ms
        self.anchor_cfg: dict[int, dict] = {}
        self.cache: dict[int, tuple[float, dict]] = {}
        self.buf: torch.Tensor | None = None

    def _anchor(self, anchor: int) -> dict:
        from .read_floor import read_floor_us
        if anchor not in self.anchor_cfg:
            self.anchor_cfg[anchor] = read_floor_us(anchor)[1]
        return self.anchor_cfg[anchor]

    def __call__(self, nbytes: int) -> tuple[float | None, dict | None]:
        if not self.cuda:
            return None, None
        if nbytes not in self.cache:
            from .read_floor import floor_call, floor_words
            from .timing import time_us
            lg = math.log(nbytes, 4)
            anchors = sorted({4 ** max(10, math.floor(lg)), 4 ** max(10, math.ceil(lg))})
            words = floor_words(nbytes)
            if self.buf is None or self.buf.numel() < words:
                self.buf = None
                self.buf = torch.randint(-2 ** 31, 2 ** 31 - 1, (words + words // 4,), dtype=torch.int32,
                                         device="cuda")
            src = self.buf[:words]
            cfgs = [self._anchor(a) for a in anchors]
            best = (float("inf"), {})
            for cfg in [c for i, c in enumerate(cfgs) if c not in cfgs[:i]]:   # both anchors may pick one config
                t = time_us(floor_call(src, cfg), rep_ms=self.rep_ms)
                best = min(best, (t, cfg), key=lambda b: b[0])
            self.cache[nbytes] = best
        return self.cache[nbytes]


def _finish(case: dict, timer_out: tuple, nbytes: int, floor: ReadFloor, fp16_us: float | None) -> dict:
    us, eager = timer_out
    case.update(us=us, eager_us=eager, bytes=nbytes)
    if us:
        f_us, f_cfg = floor(nbytes)
        case.update(tbps=nbytes / us / 1e6, floor_us=f_us, floor_frac=f_us / us, floor_config=f_cfg)
        if fp16_us:
            case.update(fp16_us=fp16_us, speedup_vs_fp16=fp16_us / us)
    return case


class Fp16:
    """fp16 cuBLAS (F.linear) per shape and M, measured once per run and recorded as a baseline case."""

    def __init__(self, device, timer: Timer, floor: ReadFloor, cases: list):
        self.device, self.timer, self.floor, self.cases = device, timer, floor, cases
        self.w: dict = {}
        self.us: dict = {}

    def __call__(self, N: int, K: int, M: int) -> float | None:
        if not self.timer.cuda:
            return None
        if (N, K, M) not in self.us:
            if (N, K) not in self.w:
                self.w.clear()
                g = torch.Generator(self.device).manual_seed(_seed("fp16", N, K))
                self.w[(N, K)] = (torch.randn(N, K, generator=g, device=self.device) * 0.02).half()
            W = self.w[(N, K)]
            x = _x(M, K, self.device, _seed("x", N, K, M))
            case = new_case("baseline", "fp16_cublas", "cublas", N, K, M, klass="fp16", bits_per_weight=16.0)
            nbytes = 2 * (N * K + M * K + M * N)
            _finish(case, self.timer(lambda: torch.nn.functional.linear(x, W)), nbytes, self.floor, None)
            case.update(fp16_us=case["us"], speedup_vs_fp16=1.0)
            self.cases.append(case)
            self.us[(N, K, M)] = case["us"]
        return self.us[(N, K, M)]


# --------------------------------------------------------------------------------- quantcc kernels
def choose_config(spec, N: int, K: int, M: int, arch: str, header: dict, backend: str):
    from codegen.arch import default_config
    if header.get("gpu"):
        from runtime.tuning import lookup_config
        found = lookup_config(spec, N, K, M, header, backend=backend)
        if found is not None:
            return found.config, found.source
    return default_config(spec, (M, N, K), arch), "default"


def _tvm_folder(root: str, name: str, arch: str) -> Path:
    for cand in (Path(root) / f"{name}_{arch}", Path(root) / name):
        if (cand / "manifest.json").is_file():
            return cand
    build = f"python -m codegen build {name} --backend tvm --arch {arch} --out {root}/{name}_{arch}"
    raise FileNotFoundError(f"no TVM build for {name} under {root} (expected {name}_{arch}/manifest.json); "
                            f"build it: {build}")


def build_kernel(spec, N: int, K: int, M: int, ctx) -> tuple[object, dict]:
    """(callable (x, tensors, out) -> y, the case's config fields)."""
    if ctx.args.backend == "tvm":
        from runtime import cubin
        folder = _tvm_folder(ctx.args.tvm_dir, spec.name, ctx.arch)
        name = cubin.find(folder, M, N, K)
        kern = cubin.load(folder, name)
        return (lambda x, t, out: kern(x, t, N, out=out)), {"config": name, "config_source": "tvm-artifact"}
    from runtime.kernels import get_kernel
    cfg, source = choose_config(spec, N, K, M, ctx.arch, ctx.header, "triton")
    mod = get_kernel(spec, M, N, K, ctx.arch, cfg)
    return (lambda x, t, out: mod.run(x, t, N, out=out)), {
        "config": cfg.label, "config_source": source, "config_fields": dataclasses.asdict(cfg)}


def reference(spec, tensors: dict, W64: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x @ W^T in float64; with activation quantization, x goes through the online input transforms (rounded
    to x's dtype, as the kernels' entry point does) and the static quantizer first."""
    if spec.act_quant is None:
        return x.to(torch.float64) @ W64.T
    from ir.actquant import quantize_activation_ref
    from ir.hadamard import block_hadamard
    xt = x
    for tr in spec.transforms:
        if tr.placement != "online" or tr.side != "input" or tr.kind != "hadamard":
            raise NotImplementedError(f"the bench reference does not model {spec.name}'s {tr.side} {tr.kind} "
                                      f"transform with activation quantization")
        xt = block_hadamard(xt.float(), tr.size, tr.normalized).to(x.dtype)
    return quantize_activation_ref(spec, tensors, xt.to(torch.float64)) @ W64.T


def run_format(name: str, N: int, K: int, qt_future, ctx) -> list[dict]:
    spec = ir.get_format(name)
    common = dict(klass=format_class(spec), bits_per_weight=spec.bits_per_weight(N, K))
    cases = [new_case("quantcc", name, ctx.args.backend, N, K, M, **common) for M in ctx.args.batches]
    try:
        spec.check_shape(N, K)
    except ir.SpecError as e:
        return [dict(c, status="skipped", reason=f"shape not legal for the format: {e}") for c in cases]
    try:
        qt = qt_future.result()
        tensors = {k: v.to(ctx.device) for k, v in qt.tensors.items()}
        W64 = ir.dequantize(qt, device=ctx.device).to(torch.float64)
    except Exception as e:  # a broken codec is a result, reported, never hidden
        return [dict(c, status="error", reason=f"preparing tensors: {type(e).__name__}: {str(e)[:300]}") for c in cases]
    stored = sum(v.numel() * v.element_size() for v in tensors.values())
    for case in cases:
        M = case["M"]
        try:
            run, cfg_fields = build_kernel(spec, N, K, M, ctx)
            case.update(cfg_fields)
            x = _x(M, K, ctx.device, _seed("x", N, K, M))
            out = torch.full((M, N), float("nan"), dtype=torch.float16, device=ctx.device)
            run(x, tensors, out)
            if ctx.cuda:
                torch.cuda.synchronize()
            case.update(check_output(out, reference(spec, tensors, W64, x), x.dtype))
            if case["status"] != "ok":
                continue
            slow = ctx.args.slow_down

            def call():
                for _ in range(slow):
                    run(x, tensors, out)
            fp16 = ctx.fp16(N, K, M)
            _finish(case, ctx.timer(call), stored + 2 * M * (K + N), ctx.floor, fp16)
        except Exception as e:  # noqa: BLE001 - a failing kernel is a result, reported, never hidden
            case.update(status="error", reason=f"{type(e).__name__}: {str(e)[:300]}")
    return cases


def run_peer(name: str, N: int, K: int, ctx) -> list[dict]:
    peer = get_peer(name)
    cases = [new_case("peer", name, "peer", N, K, M, klass=peer.klass, bits_per_weight=peer.bits,
                      version=peer.version()) for M in ctx.args.batches]
    try:
        pc = peer.build(N, K, ctx.device, torch.Generator().manual_seed(_seed(name, N, K)))
    except PeerSkip as e:
        return [dict(c, status="skipped", reason=str(e)) for c in cases]
    except Exception as e:  # noqa: BLE001 - the peer's own failure: reported as skipped with the reason
        return [dict(c, status="skipped", reason=f"building: {type(e).__name__}: {str(e)[:300]}") for c in cases]
    for case in cases:
        M = case["M"]
        case["note"] = pc.note
        try:
            x = _x(M, K, ctx.device, _seed("x", N, K, M))
            xin = pc.prepare(x)
            y = pc.call(xin)
            if ctx.cuda:
                torch.cuda.synchronize()
            case.update(check_output(y, pc.reference(x), pc.x_dtype))
            if case["status"] != "ok":
                continue
            nbytes = pc.stored_bytes + M * K * pc.x_bytes_per_elem + 2 * M * N
            _finish(case, ctx.timer(lambda: pc.call(xin)), nbytes, ctx.floor, ctx.fp16(N, K, M))
        except Exception as e:  # noqa: BLE001 - a peer that refuses a case (e.g. an M) is skipped, with why
            case.update(status="skipped", reason=f"{type(e).__name__}: {str(e)[:300]}")
    return cases


# ------------------------------------------------------------------------------------ precompiling
class _CompileOnly:
    """Stands in for a generated module's @triton.jit kernel: `kernel[grid](...)` compiles it through Triton's
    `warmup` (into Triton's on-disk cache) and launches nothing."""

    def __init__(self, jit):
        self.jit = jit

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.jit.warmup(*args, grid=grid, **kwargs)


def compile_only(mod, tensors: dict, M: int, N: int, K: int, device) -> None:
    """Run the module's host code with its kernel compiled but not launched (same arguments, hence the same
    Triton specialization and cache entry as the real call)."""
    name = mod.KERNEL_NAME
    jit = getattr(mod, name)
    setattr(mod, name, _CompileOnly(jit))
    try:
        x = torch.zeros(M, K, dtype=torch.float16, device=device)
        mod.run(x, tensors, N, out=torch.empty(M, N, dtype=torch.float16, device=device))
    finally:
        setattr(mod, name, jit)


def precompile_group(task) -> list[str]:
    """In a worker process: compile one (format, shape)'s kernels for every M on zero-filled tensors of the
    schema's shapes, so that the timing process loads them from Triton's cache instead of compiling. Errors
    are returned, not raised: the timing process meets and reports them itself."""
    from ir.tensor import torch_dtype
    from runtime.kernels import get_kernel
    name, N, K, batches, arch, header = task
    errors = []
    try:
        spec = ir.get_format(name)
        tensors = {k: torch.zeros(shape, dtype=torch_dtype(dt), device="cuda")
                   for k, (shape, dt) in spec.tensor_schema(N, K, include_optional=False).items()}
        for M in batches:
            try:
                cfg, _ = choose_config(spec, N, K, M, arch, header, "triton")
                compile_only(get_kernel(spec, M, N, K, arch, cfg), tensors, M, N, K, "cuda")
            except Exception as e:  # noqa: BLE001
                errors.append(f"{name} {N}x{K} M={M}: {type(e).__name__}: {str(e)[:200]}")
        del tensors
        torch.cuda.empty_cache()
    except Exception as e:  # noqa: BLE001
        errors.append(f"{name} {N}x{K}: {type(e).__name__}: {str(e)[:200]}")
    return errors


def start_precompile(args, items, arch: str, header: dict):
    """A spawn pool compiling the items' kernels in order, ahead of the timing loop (None when off)."""
    jobs = args.jobs if args.jobs is not None else 8
    tasks = [(name, N, K, list(args.batches), arch, header) for kind, name, N, K in items
             if kind == "quantcc" and args.backend == "triton"]
    if jobs <= 0 or not tasks:
        return None, None
    import multiprocessing
    try:
        pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(tasks)))
        return pool, pool.imap(precompile_group, tasks)
    except (OSError, RuntimeError) as e:
        print(f"bench: no precompile workers ({e}); kernels compile in the timing process", flush=True)
        return None, None


# ------------------------------------------------------------------------------------------ the loop
@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    device: torch.device
    cuda: bool
    arch: str
    header: dict
    timer: Timer
    floor: ReadFloor
    fp16: Fp16


def work_items(args) -> list[tuple[str, str, int, int]]:
    """(kind, name, N, K) groups, shape-major. A shard takes every N-th format or peer with all its shapes, so
    the kernels a format compiles once serve all shapes of that shard (configs do not depend on N, K)."""
    names = [("quantcc", f) for f in args.formats] + [("peer", p) for p in args.peers]
    i, n = args.shard
    mine = set(names[i - 1::n])
    return [(kind, name, N, K) for (N, K) in args.shapes for kind, name in names if (kind, name) in mine]


def _done_groups(paths: list[str]) -> set:
    from .report import load_results
    done = set()
    for p in paths:
        for c in load_results(p)["cases"]:
            if c["status"] != "not_run":
                done.add((c["kind"], c["name"], c["N"], c["K"]))
    return done


def _print_case(c: dict) -> None:
    tag = f"{c['kind'][:4]} {c['name']:24s} {c['N']:>6d}x{c['K']:<6d} M={c['M']:<4d}"
    if c["status"] != "ok":
        print(f"{tag} {c['status']}: {(c['reason'] or '')[:110]}", flush=True)
        return
    err = f"err {c['rel_err']:.1e}" if c["rel_err"] is not None else ""
    if c["us"] is None:
        print(f"{tag} ok {err} (no timing)", flush=True)
        return
    frac = f"{c['floor_frac']:5.0%} floor" if c["floor_frac"] else ""
    sp = f"{c['speedup_vs_fp16']:5.2f}x fp16" if c["speedup_vs_fp16"] else ""
    print(f"{tag} {c['us']:9.1f} us {c['tbps']:5.2f} TB/s {frac} {sp} eager {c['eager_us']:.0f} us "
          f"{c.get('config', '')} {err}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.shapes is None:
        args.shapes = DEFAULT_SHAPES if cuda else [(256, 512)]
    if not cuda:
        print("bench: no CUDA device: kernels run under TRITON_INTERPRET=1; correctness is checked, but no timing "
              "is meaningful here, so every time is recorded as null.", flush=True)
    header = machine(args)
    device = torch.device("cuda" if cuda else "cpu")
    timer = Timer(cuda, args.rep_ms, args.eager_iters)
    floor = ReadFloor(cuda, args.rep_ms)
    cases: list[dict] = []
    ctx = Context(args, device, cuda, header["arch"], header, timer, floor, Fp16(device, timer, floor, cases))
    out_dir = Path(args.out) if args.out else ROOT / "bench" / "results" / gpu_slug(header)
    run_info = {"argv": sys.argv[1:] if argv is None else list(argv), "shard": f"{args.shard[0]}/{args.shard[1]}",
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "backend": args.backend}
    done = _done_groups(args.skip_done)
    items = [it for it in work_items(args) if it not in done]
    t0 = time.time()
    workers, _ = start_precompile(args, items, header["arch"], header) if cuda else (None, None)
    print(f"bench: {len(items)} (format or peer) x shape groups, M in {args.batches}, shard {run_info['shard']}, "
          f"{workers._processes if workers is not None else 0} precompile workers", flush=True)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)   # synthesizes the next group's tensors

    def synth(item):
        """A future of the group's synthetic QuantizedTensor (None for peers and illegal shapes)."""
        kind, name, N, K = item
        if kind != "quantcc":
            return None
        spec = ir.get_format(name)
        try:
            spec.check_shape(N, K)
        except ir.SpecError:
            return None
        fut = pool.submit(synthetic_quantized, spec, N, K, _seed(name, N, K) & 0xFFFF)
        if args.no_prefetch:
            concurrent.futures.wait([fut])
        return fut

    futures = {0: synth(items[0])} if items else {}
    for idx, item in enumerate(items):
        kind, name, N, K = item
        if args.time_budget is not None and time.time() - t0 >= args.time_budget:
            for k2, n2, N2, K2 in items[idx:]:
                for M in args.batches:
                    cases.append(new_case(k2, n2, args.backend if k2 == "quantcc" else "peer", N2, K2, M,
                                          status="not_run", reason=f"time budget of {args.time_budget:.0f} s spent"))
            break
        if idx + 1 < len(items):
            futures[idx + 1] = synth(items[idx + 1])
        try:
            group = (run_format(name, N, K, futures.pop(idx), ctx) if kind == "quantcc" else
                     run_peer(name, N, K, ctx))
        except Exception as e:  # noqa: BLE001 - one broken group must not lose the run's other results
            group = [new_case(kind, name, args.backend if kind == "quantcc" else "peer", N, K, M, status="error",
                              reason=f"{type(e).__name__}: {str(e)[:300]}") for M in args.batches]
        for c in group:
            _print_case(c)
        cases.extend(group)
        if cuda:
            torch.cuda.empty_cache()
        run_info["elapsed_s"] = round(time.time() - t0, 1)
        write_outputs(out_dir, {"header": header, "runs": [run_info], "cases": cases}, plots=False)
    pool.shutdown(wait=False, cancel_futures=True)
    if workers is not None:
        workers.terminate()
    run_info["elapsed_s"] = round(time.time() - t0, 1)
    doc = {"header": header, "runs": [run_info], "cases": cases}
    write_outputs(out_dir, doc, plots=not args.no_plots)
    bad = [c for c in cases if c["kind"] == "quantcc" and c["status"] in ("FAILED", "error")]
    print(f"bench: {len(cases)} cases in {run_info['elapsed_s']} s -> {out_dir}/results.json"
          + (f"; {len(bad)} quantcc cases FAILED or errored" if bad else ""), flush=True)
    if not cuda:
        print("bench: CPU interpreter run: correctness only, times are null (no timing is meaningful here).")
    return 1 if bad else 0
