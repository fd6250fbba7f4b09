"""TVM backend: render a KernelPlan as TVMScript, build it with TVM to CUDA C, compile that with nvcc to a
cubin, and describe the launch (grid, block, shared memory, argument order and dtypes) for
runtime/cubin.py, which runs the kernel with torch + cuda.core only (TVM is not on the GPU machine).

The same TVMScript text is also built for `llvm` (tests): its thread loops become serial loops, so CI checks
the very kernel text that becomes the cubin. What differs between the two targets is only what
`TargetSyntax` renders: the block/thread loop kinds, the per-thread index of `local` buffers and the
split-K atomic add.

Schedule (per plan, `schedule(plan)`): KernelConfig's block_m/block_n/block_k/split_k/num_warps, and a
per-format-family layout hint: the axis along which consecutive weight bytes lie (lanes go along it), and
how many consecutive columns / ks one thread should decode (one int32 word for the packed-affine formats).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ir import FormatSpec, KernelConfig, SpecError

from . import tvm_compat
from .env import render, template_hash
from .plan import KernelPlan, lower

ARCH_TARGETS = {"sm80": "sm_80", "sm86": "sm_86", "sm89": "sm_89", "sm90": "sm_90a"}
X_DTYPES = (("float16", "f16"), ("bfloat16", "bf16"))
ACC_MAX = 32            # fp32 accumulators per thread (registers) the schedule allows
STATIC_SMEM_MAX = 48 * 1024
RESERVED = {"x", "y", "bias", "acc", "red", "xs", "w", "W", "M", "N", "K", "has_bias"}
LAUNCHER_FILE = "tvm_launcher.py"


# -- which formats the backend covers, and how their bytes lie ----------------------------------------
@dataclass(frozen=True, slots=True)
class Layout:
    fast: str     # "N" or "K": the axis along which consecutive weight words/bytes lie (lanes go along it)
    vn: int       # preferred consecutive columns decoded by one thread
    vk: int       # preferred consecutive ks decoded by one thread


def _layout(plan: KernelPlan) -> Layout:
    fam, bits = _family(plan), plan.decode["bits"]
    if fam in ("gptq", "eqat"):
        return Layout("N", 1, 32 if plan.packing["straddle"] else 32 // bits)  # one word (3-bit: three)
    if fam == "awq":
        return Layout("N", 32 // bits, 1)
    if fam == "matryoshka":
        return Layout("N", 1, plan.params["fields_per_word"])  # one word along K
    if fam == "ccq":  # one cluster byte (seq_len values) / WINT2.5 words along K, columns adjacent
        return Layout("N", 1, plan.params.get("seq_len", 8))
    return Layout("K", 1, 8)  # gguf, bnb: row-major bytes along K; aqlm, vptq: codes along K


def _tensors(plan: KernelPlan) -> list[dict]:
    """The canonical tensors the decode reads, in spec order (unused optional ones are not arguments)."""
    fam, p = _family(plan), plan.params
    skip = set()
    if fam in ("gptq", "eqat") and not p.get("desc_act", False):
        skip.add("g_idx")
    # float8 codes are read as their uint8 bits (templates/tvm/_actquant.jinja e4m3_f32)
    out = [{"name": t.name, "dtype": "uint8" if t.dtype.startswith("float8") else t.dtype}
           for t in plan.tensors if t.name not in skip]
    clash = sorted({t["name"] for t in out} & RESERVED)
    if clash:
        raise SpecError(f"format {plan.format!r}: tensor names {clash} clash with names the TVM templates use")
    return out


SUPPORTED = ("gptq", "eqat", "awq", "gguf", "bnb", "matryoshka", "ccq", "aqlm", "higgs", "watersic", "vptq", "qtip",
             "w8a8", "prefixquant")
# activation codes the launcher can hand the kernel (runtime/cubin.py quantize_activation): int8 holds every signed
# int code of at most 8 bits; e4m3 codes travel as their uint8 bits
ACT_CODE_DTYPES = {"int": "int8", "fp8_e4m3": "uint8"}


def _family(plan: KernelPlan) -> str:
    return json.loads(plan.spec_json)["family"]


def check_supported(plan: KernelPlan) -> None:
    """Refuse, at build time, what this backend does not generate yet, with the reason."""
    fam = _family(plan)
    if fam not in SUPPORTED:
        raise SpecError(f"the TVM backend does not cover format {plan.format!r} (family {fam!r}, decode "
                        f"{plan.decode['kind']!r}) yet: no TVM decode macro is written for it. It covers the "
                        f"families {list(SUPPORTED)}. Use --backend triton for this format.")
    aq = plan.act_quant
    if aq and (aq["kind"] not in ACT_CODE_DTYPES or (aq["kind"] == "int" and (aq["qmin"] < -128 or aq["qmax"] > 127))):
        raise SpecError(f"the TVM backend passes activation codes as int8 or as e4m3 bits; format {plan.format!r} "
                        f"quantizes x to {aq['kind']} codes in [{aq['qmin']}, {aq['qmax']}], which neither holds. "
                        f"Use --backend triton for this format.")


# -- schedule -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Schedule:
    BM: int
    BN: int
    BK: int
    SPLIT: int
    THREADS: int
    TN: int
    TK: int
    VN: int
    VK: int
    RN: int
    RK: int
    ACC_COLS: int
    UNROLL_RK: bool     # unroll the K-slice loop too (gemv rows): more loads in flight, larger code
    fast: str
    tn_expr: str
    tk_expr: str

    @property
    def label(self) -> str:
        return (f"threads {self.THREADS} = TN {self.TN} x TK {self.TK} (lanes along {self.fast}), per thread "
                f"{self.RN}x{self.VN} columns x {self.RK}x{self.VK} ks per K-slice, {self.BM} rows")


def _pow2_down(v: int) -> list[int]:
    """Powers of two from the largest <= v down to 1 (tiles must divide the power-of-two block sizes)."""
    v = 1 << (v.bit_length() - 1)
    out = []
    while v >= 1:
        out.append(v)
        v //= 2
    return out


def schedule(plan: KernelPlan, config: KernelConfig | None = None) -> Schedule:
    """Thread layout for the plan's config (or `config`); SpecError when it cannot be tiled within the budget."""
    c, lay = config or plan.config, _layout(plan)
    threads = c.num_warps * 32
    BM, BN, BK = c.block_m, c.block_n, c.block_k
    spec = json.loads(plan.spec_json)
    # a vector of VN columns / VK ks never straddles the end of N / K: every legal N, K is a multiple of it
    vn_max, vk_max = spec["n_multiple"] & -spec["n_multiple"], spec["k_multiple"] & -spec["k_multiple"]
    for vn in _pow2_down(min(lay.vn, BN, vn_max)):
        for vk in _pow2_down(min(lay.vk, BK, vk_max)):
            tks = [tk for tk in _pow2_down(threads)
                   if tk * vk <= BK and (threads // tk) * vn <= BN and BM * BN // (threads // tk) <= ACC_MAX]
            if not tks:
                continue
            TK = max(tks) if lay.fast == "K" else min(tks)
            TN = threads // TK
            fast_n = lay.fast == "N"
            return Schedule(
                BM=BM, BN=BN, BK=BK, SPLIT=c.split_k, THREADS=threads, TN=TN, TK=TK, VN=vn, VK=vk,
                RN=BN // (TN * vn), RK=BK // (TK * vk), ACC_COLS=BN // TN, UNROLL_RK=BM <= 4, fast=lay.fast,
                tn_expr=f"tid % {TN}" if fast_n else f"tid // {TK}",
                tk_expr=f"tid // {TN}" if fast_n else f"tid % {TK}")
    raise SpecError(f"config {c.label} cannot be tiled by the TVM {plan.family} schedule: {threads} threads over a "
                    f"{BN} x {BK} (N x K) slice with at most {ACC_MAX} fp32 accumulators per thread for {BM} rows "
                    f"needs block_m * block_n <= {ACC_MAX} * min({threads}, block_n); lower block_m or raise block_n")


@dataclass(frozen=True, slots=True)
class MmaSchedule:
    """Tensor-core gemm: warps side by side along N, each with NT 8-column and MT 16-row mma tiles."""
    BM: int
    BN: int
    BK: int
    SPLIT: int
    THREADS: int
    MT: int
    NT: int
    K16: bool       # every legal K is a multiple of 16: a k-step's 16 ks are clamped as one vector

    @property
    def label(self) -> str:
        return (f"mma.m16n8k16: {self.THREADS // 32} warps along N x {self.NT} n-tiles, {self.MT} m-tiles, "
                f"x staged {self.BM}x{self.BK} in shared memory, B fragments decoded per lane")


MMA_ACC_MAX = 64     # fp32 accumulator registers per lane


def mma_schedule(plan: KernelPlan, config: KernelConfig | None = None) -> MmaSchedule:
    """The tensor-core schedule of a gemm plan; SpecError (with the reason) when the config does not fit it."""
    c = config or plan.config
    warps, threads = c.num_warps, c.num_warps * 32
    why = []
    if plan.family != "gemm":
        why.append("only the gemm family uses mma")
    if c.block_m % 16 or c.block_k % 16:
        why.append("block_m and block_k must be multiples of 16")
    if c.block_n % (8 * warps):
        why.append(f"block_n must be a multiple of 8 x num_warps = {8 * warps}")
    if (c.block_m // 16) * max(1, c.block_n // (8 * warps)) * 4 > MMA_ACC_MAX:
        why.append(f"at most {MMA_ACC_MAX} fp32 accumulators per lane")
    if (c.block_m * c.block_k) % threads or c.block_m * c.block_k * 2 > STATIC_SMEM_MAX:
        why.append(f"the {c.block_m}x{c.block_k} x tile must split evenly over {threads} threads and fit 48 KiB")
    if why:
        raise SpecError(f"config {c.label} does not fit the TVM mma gemm schedule: {'; '.join(why)}")
    return MmaSchedule(BM=c.block_m, BN=c.block_n, BK=c.block_k, SPLIT=c.split_k, THREADS=threads,
                       MT=c.block_m // 16, NT=c.block_n // (8 * warps),
                       K16=json.loads(plan.spec_json)["k_multiple"] % 16 == 0)


def uses_mma(plan: KernelPlan, config: KernelConfig | None = None) -> bool:
    try:
        mma_schedule(plan, config)
        return True
    except SpecError:
        return False


def schedule_for(plan: KernelPlan) -> Schedule | MmaSchedule:
    """The schedule the plan's template renders: mma for gemm plans that fit it, else SIMT."""
    return mma_schedule(plan) if uses_mma(plan) else schedule(plan)


def fit_config(plan: KernelPlan) -> KernelConfig:
    """The plan's config if a schedule can tile it, else the same config with block_m halved until it fits
    (the shared defaults are tuned for Triton's tl.dot, whose tiles the SIMT schedule cannot hold)."""
    c = plan.config
    while True:
        try:
            if not uses_mma(plan, c):
                schedule(plan, c)
            return c
        except SpecError:
            if c.block_m == 1:
                raise
            c = KernelConfig(**{**c.to_dict(), "block_m": c.block_m // 2})


def _relower(plan: KernelPlan, config: KernelConfig, case: dict) -> KernelPlan:
    spec = FormatSpec.from_json(plan.spec_json)
    return lower(spec, case["M"], case["N"], case["K"], config, plan.arch, family=plan.family)


# -- rendering ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TargetSyntax:
    """What differs between the CUDA and the llvm rendering of the same kernel."""
    kind: str

    def block(self, extent, tag: str) -> str:
        return f'T.thread_binding({extent}, thread="{tag}")' if self.kind == "cuda" else f"T.serial({extent})"

    def thread(self, extent) -> str:
        return self.block(extent, "threadIdx.x")

    def unroll(self, extent) -> str:
        """CUDA: `#pragma unroll` for nvcc (TVM's own unrolling bloats the source); llvm: a plain loop."""
        if self.kind == "cuda":
            return f'T.unroll({extent}, annotations={{"pragma_unroll_explicit": 0}})'
        return f"T.serial({extent})"

    @property
    def tid(self) -> str:  # per-thread index of `local` buffers: CUDA threads own their copy
        return "" if self.kind == "cuda" else "tid, "

    def unroll_by(self, extent: int, factor: int) -> str:
        """CUDA: `#pragma unroll <factor>` (nvcc's own choice fully unrolls big bodies and spills); llvm: plain."""
        if self.kind == "cuda" and extent > 1 and factor > 1:
            return f'T.serial({extent}, annotations={{"pragma_unroll": {min(factor, extent)}}})'
        return f"T.serial({extent})"

    def tid_dims(self, threads: int) -> str:
        return "" if self.kind == "cuda" else f"{threads}, "

    def atomic_add(self, dst: str, value: str) -> str:
        if self.kind == "cuda":
            return f"T.cuda.atomic_add(T.address_of({dst}), {value})"
        return f"{dst} = {dst} + {value}"  # serial on the CPU


def template_for(plan: KernelPlan) -> str:
    return "tvm/gemm_mma.py.jinja" if uses_mma(plan) else f"tvm/{plan.family}.py.jinja"


def decode_template_for(plan: KernelPlan) -> str:
    return f"tvm/decode/{_family(plan)}.jinja"


def symbol(plan: KernelPlan, dtype: str) -> str:
    return f"{plan.name}_{dict(X_DTYPES)[dtype]}"


def render_tvm(plan: KernelPlan, target: str = "cuda") -> str:
    """The TVMScript file of a kernel plan: one prim_func per activation dtype."""
    check_supported(plan)
    name = template_for(plan)
    src = render(name, plan=plan, sched=schedule_for(plan), tg=TargetSyntax(target), tensors=_tensors(plan),
                 dtypes=[{"dtype": dt, "symbol": symbol(plan, dt)} for dt, _ in X_DTYPES],
                 decode_template=decode_template_for(plan), template_name=name, template_hash=template_hash(),
                 tvm_version=tvm_compat.TVM_PIN)
    return src


def render_dequant(plan: KernelPlan, target: str = "llvm") -> str:
    """A decode-only kernel W[n, k] = decode(n, k) (float32), for testing the decode macros."""
    check_supported(plan)
    name = "tvm/dequant.py.jinja"
    return render(name, plan=plan, tg=TargetSyntax(target), tensors=_tensors(plan), symbol=f"{plan.name}_dequant",
                  decode_template=decode_template_for(plan), template_name=name, tvm_version=tvm_compat.TVM_PIN)


def module_text(src: str) -> str:
    """The parseable part of a rendered file (TVMScript's parser takes the module class, not the imports)."""
    i = src.index("@I.ir_module")
    return src[i:]


# -- CPU build (tests) ----------------------------------------------------------------------------------
def _flat(t):
    """A format tensor as the flat 1-D buffer the kernel reads (float8 codes as their uint8 bits)."""
    import torch
    return t.reshape(-1).view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t.reshape(-1)


class CpuKernel:
    """A plan built for llvm with the same calling convention as the cubin launcher (tests only)."""

    def __init__(self, plan: KernelPlan):
        self.plan, self.sched = plan, schedule_for(plan)
        self.tensors = [t["name"] for t in _tensors(plan)]
        self.lib = tvm_compat.compile_llvm(module_text(render_tvm(plan, "llvm")), plan.name)

    def run(self, x, tensors: dict, N: int, bias=None, out=None):
        """The launcher's own transform / allocation / bias steps (runtime/cubin.py) around the llvm kernel."""
        import torch

        from runtime.cubin import run_transformed

        def run_kernel(x2, y, has_bias):
            b = bias if bias is not None else torch.zeros(N, dtype=x.dtype)
            args = [x2, y, b] + [_flat(tensors[n]) for n in self.tensors] + [int(has_bias)]
            tvm_compat.call(self.lib, symbol(self.plan, str(x.dtype).removeprefix("torch.")), *args)
        return run_transformed(_transform_meta(self.plan, self.sched), x, tensors, N, bias, out, run_kernel)


def _transform_meta(plan: KernelPlan, sched) -> dict:
    """The launch metadata runtime/cubin.py's transform step reads: the online transforms in spec order, and for
    formats that quantize activations how the launcher turns x into the kernel's codes (act_quant: null if none)."""
    aq = plan.act_quant
    return {"input_transforms": [dict(t) for t in plan.input_transforms],
            "output_transforms": [dict(t) for t in plan.output_transforms],
            "zero_init_y": sched.SPLIT > 1,
            "act_quant": aq and {"kind": aq["kind"], "tensor": aq["tensor"], "qmin": aq["qmin"], "qmax": aq["qmax"],
                                 "codes": ACT_CODE_DTYPES[aq["kind"]], "row_scale": plan.row_scale,
                                 "accumulate": "float32 sums of exact code products (equal to int32 sums while "
                                               "|partial sums| < 2**24); mma operands float16"}}


def dequant_cpu(plan: KernelPlan, tensors: dict, N: int, K: int):
    """W (N, K) float32 decoded by the TVM decode macro of the plan's format, built for llvm."""
    import torch
    lib = tvm_compat.compile_llvm(module_text(render_dequant(plan, "llvm")), f"{plan.name}_dequant")
    W = torch.full((N, K), float("nan"), dtype=torch.float32)
    tvm_compat.call(lib, f"{plan.name}_dequant", W, *[_flat(tensors[t["name"]]) for t in _tensors(plan)])
    return W


# -- CUDA build: TVM -> CUDA C -> nvcc -> cubin, plus launch metadata ------------------------------------
_KERNEL_RE = re.compile(r'extern "C" __global__ void __launch_bounds__\((\d+)\) (\w+)\(([^)]*)\)\s*\{')
_PTXAS_FN = re.compile(r"Function properties for (\w+)")
_PTXAS_USED = re.compile(r"Used (\d+) registers.*?(\d+) bytes smem")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


NVCC_FALLBACKS = ("/usr/local/cuda/bin/nvcc",)


def nvcc_path() -> str:
    path = shutil.which("nvcc") or next((p for p in NVCC_FALLBACKS if os.path.exists(p)), "")
    if not path:
        raise SpecError("nvcc not found on PATH (nor /usr/local/cuda/bin/nvcc): the TVM backend compiles TVM's CUDA C "
                        "to a cubin with nvcc on the build machine. Install the CUDA toolkit (12.x or 13.x) and put "
                        "nvcc on PATH, or build with --backend triton.")
    return path


def kernel_signatures(cuda_src: str) -> dict[str, dict]:
    """{kernel symbol: {"threads", "params": [{"name", "kind", "ctype"}]}} from TVM's CUDA C."""
    out = {}
    for threads, name, params in _KERNEL_RE.findall(cuda_src):
        plist = []
        for p in (q.strip() for q in params.split(",") if q.strip()):
            ctype, pname = p.rsplit(" ", 1)
            if "*" in ctype:
                if not pname.endswith("_ptr"):
                    raise SpecError(f"unexpected pointer parameter {p!r} in TVM's kernel {name}")
                plist.append({"name": pname[:-4], "kind": "pointer", "ctype": ctype.replace("__restrict__", "").strip()})
            elif ctype == "int":
                plist.append({"name": pname, "kind": "int32", "ctype": ctype})
            else:
                raise SpecError(f"unexpected parameter {p!r} in TVM's kernel {name}; the launcher passes pointers "
                                f"and int32 scalars only")
        out[name] = {"threads": int(threads), "params": plist}
    return out


def _ptxas_info(log: str) -> dict[str, dict]:
    info, cur = {}, None
    for line in log.splitlines():
        m = _PTXAS_FN.search(line)
        if m:
            cur = m.group(1)
            info[cur] = {}
            continue
        if cur is None:
            continue
        m = _PTXAS_SPILL.search(line)
        if m:
            info[cur]["spill_bytes"] = int(m.group(1)) + int(m.group(2))
        m = _PTXAS_USED.search(line)
        if m:
            info[cur].update(registers=int(m.group(1)), static_shared_bytes=int(m.group(2)))
    return info


def nvcc_cubin(cu_path: Path, cubin_path: Path, arch: str) -> dict[str, dict]:
    """Compile a .cu to a cubin for the arch (deterministic: fixed flags, relative file name); returns ptxas'
    per-kernel registers / static shared memory / spills."""
    sm = ARCH_TARGETS[arch].removeprefix("sm_")
    fd, tmp = tempfile.mkstemp(prefix=f".{cubin_path.name}.", dir=cubin_path.parent)
    os.close(fd)
    cmd = [nvcc_path(), "-cubin", "-O3", "-std=c++17", f"-gencode=arch=compute_{sm},code=sm_{sm}",
           "-diag-suppress", "177", "-Xptxas", "-v", "-o", tmp, cu_path.name]
    try:
        r = subprocess.run(cmd, cwd=cu_path.parent, capture_output=True, text=True)
        if r.returncode != 0:
            raise SpecError(f"nvcc failed on {cu_path.name} ({' '.join(cmd[1:])}):\n{r.stderr.strip()[-3000:]}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, cubin_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return _ptxas_info(r.stderr + r.stdout)


def _atomic_write(path: Path, data: str | bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def launch_metadata(plan: KernelPlan, cuda_src: str, ptxas: dict[str, dict]) -> dict:
    """Everything runtime/cubin.py needs to check arguments and launch, as plain JSON data."""
    s = schedule_for(plan)
    sigs = kernel_signatures(cuda_src)
    symbols, params = {}, None
    for dt, _ in X_DTYPES:
        want = symbol(plan, dt) + "_kernel"
        if want not in sigs:
            raise SpecError(f"TVM's CUDA source for {plan.name} has no kernel {want}; found {sorted(sigs)}")
        sig = sigs[want]
        if sig["threads"] != s.THREADS:
            raise SpecError(f"{want}: TVM launch bounds {sig['threads']} != the schedule's {s.THREADS} threads")
        names = [(p["name"], p["kind"]) for p in sig["params"]]
        if params is not None and names != [(p["name"], p["kind"]) for p in params]:
            raise SpecError(f"{plan.name}: the float16 and bfloat16 kernels take different arguments")
        params = params or sig["params"]
        symbols[dt] = want
    known = {"x", "y", "bias", "M", "N", "K", "has_bias"} | {t["name"] for t in _tensors(plan)}
    unknown = [p["name"] for p in params if p["name"] not in known]
    if unknown:
        raise SpecError(f"{plan.name}: TVM's kernel takes arguments {unknown} the launcher cannot supply")
    resources = {}
    for dt, sym in symbols.items():
        r = ptxas.get(sym, {})
        if r.get("static_shared_bytes", 0) > STATIC_SMEM_MAX:
            raise SpecError(f"{sym}: {r['static_shared_bytes']} bytes of static shared memory exceed {STATIC_SMEM_MAX}")
        resources[dt] = r
    return {
        "symbols": symbols,
        "params": params,
        "grid": [f"(N + {s.BN - 1}) // {s.BN}", str(s.SPLIT), f"(M + {s.BM - 1}) // {s.BM}"],
        "block": [s.THREADS, 1, 1],
        "dynamic_shared_bytes": 0,
        "resources": resources,
        "y_dtype": "float32" if s.SPLIT > 1 else "x",
        **_transform_meta(plan, s),
        "x_dtypes": [dt for dt, _ in X_DTYPES],
        "schedule": {"kind": type(s).__name__, "label": s.label, **asdict(s)},
        "tensor_schema": {t.name: {"shape": list(plan.schema_exprs[t.name][0]), "dtype": t.dtype,
                                   "optional": t.optional} for t in plan.tensors},
        "shape_params": plan.spec_params,
        "k_multiple": json.loads(plan.spec_json)["k_multiple"],
        "n_multiple": json.loads(plan.spec_json)["n_multiple"],
    }


def build_all(spec: FormatSpec, planned: list[tuple[KernelPlan, list[dict]]], out: Path) -> list[dict]:
    """Build every (plan, cases) of artifacts.plans_for for the TVM backend; returns manifest entries.
    Configs the SIMT schedule cannot tile are fitted first (fit_config), so the kernel name tells the truth."""
    fitted: dict[str, tuple[KernelPlan, list[dict]]] = {}
    for plan, cases in planned:
        check_supported(plan)
        cfg = fit_config(plan)
        p = plan if cfg == plan.config else _relower(plan, cfg, cases[0])
        fitted.setdefault(p.name, (p, []))[1].extend(cases)
    entries = []
    for plan, cases in fitted.values():
        entry = build_kernel(plan, out)
        entries.append({
            "name": plan.name, "file": entry["files"]["cubin"], "backend": "tvm", "family": plan.family,
            "config": plan.config.to_dict(), "config_key": plan.config.key,
            "entry_point": f"{LAUNCHER_FILE[:-3]}.load(folder, {plan.name!r})(x, tensors, N, bias=None, out=None)",
            "tensors": list(plan.tensor_names), "cases": cases, **entry,
        })
    return entries


def build_kernel(plan: KernelPlan, out: Path) -> dict:
    """Write <name>.tvm.py (TVMScript), <name>.cu (TVM's CUDA C) and <name>.cubin; return the manifest entry."""
    check_supported(plan)
    nvcc_path()  # fail before the (slow) TVM build when nvcc is missing
    out.mkdir(parents=True, exist_ok=True)
    script = render_tvm(plan, "cuda")
    cuda_src = tvm_compat.compile_cuda(module_text(script), plan.name, ARCH_TARGETS[plan.arch])
    files = {"tvmscript": f"{plan.name}.tvm.py", "cuda": f"{plan.name}.cu", "cubin": f"{plan.name}.cubin"}
    _atomic_write(out / files["tvmscript"], script)
    _atomic_write(out / files["cuda"], cuda_src)
    ptxas = nvcc_cubin(out / files["cuda"], out / files["cubin"], plan.arch)
    _atomic_write(out / LAUNCHER_FILE, launcher_source())
    return {"files": files, "launch": launch_metadata(plan, cuda_src, ptxas), "launcher": LAUNCHER_FILE,
            "template": template_for(plan), "decode_template": decode_template_for(plan),
            "tvm": tvm_compat.version()}


def launcher_source() -> str:
    """The standalone launcher shipped in every artifact folder: runtime/cubin.py verbatim (torch + cuda.core)."""
    src = (Path(__file__).resolve().parent.parent / "runtime" / "cubin.py").read_text()
    return "# Copied from quantcc runtime/cubin.py by the TVM backend; it imports only torch and cuda.core.\n" + src
