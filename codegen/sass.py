"""Compile a generated Triton kernel for an NVIDIA arch on any machine (no GPU needed) and report what
the hardware will run: registers, spills, shared memory, and the SASS instruction mix.

`python -m codegen sass FORMAT --shape N,K --batch M [--arch sm90] [--config JSON] [--dump DIR]`

Triton ships ptxas and nvdisasm, so `triton.compile(..., target=GPUTarget("cuda", cc, 32))` produces the
same cubin the GPU machine would (same triton version). This is the evidence the performance notes cite
(instruction mix per weight, occupancy) and a fast loop for kernel design without device time.
"""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ir
from ir import FormatSpec, KernelConfig

from .arch import ARCHES, default_config
from .plan import KernelPlan, lower
from .triton_backend import render_triton

_PTR = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32", "int32": "*i32", "uint32": "*u32",
        "int16": "*i16", "uint16": "*u16", "int8": "*i8", "uint8": "*u8", "int64": "*i64",
        "float8_e4m3fn": "*fp8e4nv"}


@dataclass(frozen=True)
class SassReport:
    kernel: str
    config: str
    registers: int
    spills: int          # bytes of local memory the compiler spilled to (0 is what we want)
    shared: int          # bytes of dynamic + static shared memory per program
    num_warps: int
    occupancy_warps: int  # resident warps per SM the register / smem use allows (of 64 on sm80/sm90)
    mix: dict            # opcode (without modifiers) -> count over the whole kernel
    sass: str
    weights_per_thread: int = 0   # weights one thread decodes per K-loop iteration (block_n * block_k / threads)

    @property
    def main_loop(self) -> dict:
        """Opcode counts of the longest loop (a backward branch to an earlier label): the K loop, where the
        per-weight cost is (software pipelining puts its prologue and epilogue outside)."""
        return loop_mix(self.sass)

    def table(self, top: int = 25) -> str:
        total = sum(self.mix.values())
        lines = [f"{self.kernel}  [{self.config}]",
                 (f"  registers/thread {self.registers}, spills {self.spills} B, shared {self.shared} B, "
                  f"{self.num_warps} warps/program, occupancy {self.occupancy_warps}/64 warps per SM"),
                 f"  {total} SASS instructions; top opcodes:"]
        for op, n in sorted(self.mix.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"    {op:<12} {n:5d}  {100.0 * n / total:5.1f}%")
        loop = self.main_loop
        if loop and self.weights_per_thread:
            n = sum(loop.values())
            top_ops = ", ".join(f"{op} {c}" for op, c in sorted(loop.items(), key=lambda kv: -kv[1])[:8])
            lines.append(f"  K loop: {n} instructions per iteration for {self.weights_per_thread} weights per thread "
                         f"({n / self.weights_per_thread:.2f} per weight): {top_ops}")
        return "\n".join(lines)


def loop_mix(sass: str) -> dict:
    """Opcode counts between the label and the backward branch of the longest loop of an nvdisasm listing."""
    labels, ins = {}, []
    for line in sass.splitlines():
        lab = re.match(r"\s*\.L_x_(\d+):", line)
        if lab:
            labels[lab.group(1)] = len(ins)
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)([^;]*)", line)
        if m:
            ins.append((m.group(1), m.group(2)))
    best = None
    for i, (op, rest) in enumerate(ins):
        tgt = re.search(r"\.L_x_(\d+)", rest) if op == "BRA" else None
        if tgt and labels.get(tgt.group(1), i + 1) <= i:
            start = labels[tgt.group(1)]
            if best is None or i - start > best[1] - best[0]:
                best = (start, i)
    return dict(collections.Counter(op for op, _ in ins[best[0]:best[1] + 1])) if best else {}


def _nvidia_tool(name: str) -> str:
    """Path of a CUDA tool triton ships (ptxas, nvdisasm): the same versions the GPU machine's triton uses."""
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _signature(plan: KernelPlan, x_dtype: str, M: int, N: int, K: int) -> tuple[dict, dict, list[str]]:
    """Triton signature, constexpr values and 16-divisible arguments of the generated kernel, specialized
    the way triton's JIT specializes a real launch: an int argument equal to 1 becomes a constant, and
    pointers (torch allocations) and ints divisible by 16 carry tt.divisibility=16 (what lets the compiler
    vectorize loads); without this the offline SASS would not be the SASS the GPU runs."""
    cfg = plan.config
    aq = plan.act_quant
    xq = ("*i8" if aq["kind"] == "int" else "*fp8e4nv") if aq else _PTR[x_dtype]
    sig: dict[str, str] = {"x_ptr": xq, "y_ptr": _PTR[x_dtype], "bias_ptr": _PTR[x_dtype],
                           "ws_ptr": "*fp32" if cfg.split_k > 1 else _PTR[x_dtype],
                           "tickets_ptr": "*i32" if cfg.split_k > 1 else _PTR[x_dtype]}
    for t in plan.tensors:
        sig[f"{t.name}_ptr"] = _PTR[t.dtype]
    aligned = list(sig)
    values = {"M": M, "N": N, "K": K, "K_ITERS": -(-K // (cfg.split_k * cfg.block_k)), "stride_xm": K, "stride_ym": N}
    consts = {}
    for a, v in values.items():
        if v == 1:
            consts[a] = 1
        else:
            sig[a] = "i32"
            if v % 16 == 0:
                aligned.append(a)
    consts.update({"HAS_BIAS": False, "INTERPRETED": False, **dict(plan.constexprs),
                   "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "SPLIT_K": cfg.split_k})
    order = ["x_ptr", "y_ptr", "bias_ptr", "ws_ptr", "tickets_ptr", *(f"{t.name}_ptr" for t in plan.tensors), *values, "HAS_BIAS",
             "INTERPRETED", *(n for n, _ in plan.constexprs), "BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K"]
    return {a: sig.get(a, "constexpr") for a in order}, consts, aligned


def _occupancy(regs: int, shared: int, num_warps: int, arch: str) -> int:
    """Resident warps per SM (sm80/sm90: 64K registers, 64 warps), from registers and shared memory."""
    regs_per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256
    by_regs = (65536 // (regs_per_warp * num_warps)) * num_warps
    smem_sm = ARCHES[arch].smem_bytes + 1024  # per-SM capacity is the per-block limit plus 1 KiB reserved
    by_smem = (smem_sm // shared) * num_warps if shared else 64
    return min(64, by_regs, by_smem)


def compile_report(spec: FormatSpec, M: int, N: int, K: int, arch: str = "sm90",
                   config: KernelConfig | None = None, x_dtype: str = "float16",
                   dump: Path | None = None) -> SassReport:
    """Render the kernel for (spec, M, N, K), compile it for `arch` with triton's ptxas, disassemble."""
    cfg = config or default_config(spec, (M, N, K), arch)
    plan = lower(spec, M, N, K, cfg, arch)
    tmp = Path(tempfile.mkdtemp(prefix="quantcc_sass_"))
    path = tmp / f"{plan.name}.py"
    path.write_text(render_triton(plan))
    sig, consts, aligned = _signature(plan, x_dtype, M, N, K)
    major, minor = ARCHES[arch].capability
    job = {"path": str(path), "kernel": plan.name, "sig": sig, "consts": consts, "aligned": aligned,
           "cc": 10 * major + minor,
           "num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "maxnreg": cfg.maxnreg,
           "out": str(tmp)}
    # a fresh process: under TRITON_INTERPRET=1 (CI, tests) this process's triton is in interpreter mode
    env = dict(os.environ, TRITON_INTERPRET="0")
    r = subprocess.run([sys.executable, "-c", "import sys, codegen.sass as s; s._compile_job(sys.argv[1])",
                        json.dumps(job)], check=False, capture_output=True, text=True, env=env,
                       cwd=str(Path(__file__).resolve().parent.parent))
    if r.returncode:
        raise RuntimeError(f"compiling {plan.name} for {arch} failed:\n{r.stderr.strip()[-2000:]}")
    meta = json.loads((tmp / "meta.json").read_text())
    cubin = tmp / f"{plan.name}.cubin"
    sass = subprocess.run([_nvidia_tool("nvdisasm"), "-c", str(cubin)], check=True, capture_output=True, text=True).stdout
    mix = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m:
            mix[m.group(1)] += 1
    # triton fills n_regs only when it loads the binary on a device; ptxas -v reports the same figures
    regs, spills = _cubin_resources((tmp / f"{plan.name}.ptx").read_text(), arch)
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
        for ext in ("ptx", "ttgir", "py"):
            (dump / f"{plan.name}.{ext}").write_text((tmp / f"{plan.name}.{ext}").read_text())
        (dump / f"{plan.name}.sass").write_text(sass)
    shared = int(meta["shared"])
    return SassReport(kernel=plan.name, config=cfg.label, registers=regs, spills=spills, shared=shared,
                      num_warps=cfg.num_warps, occupancy_warps=_occupancy(regs, shared, cfg.num_warps, arch),
                      mix=dict(mix), sass=sass,
                      weights_per_thread=cfg.block_n * cfg.block_k // (32 * cfg.num_warps))


def _compile_job(job_json: str) -> None:
    """Child-process half of compile_report: import the rendered module as real JIT code and compile it."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from runtime.loader import load_kernel_module

    job = json.loads(job_json)
    fn = getattr(load_kernel_module(job["path"]), job["kernel"])
    names = list(job["sig"])
    src = ASTSource(fn, job["sig"], constexprs={(names.index(k),): v for k, v in job["consts"].items()},
                    attrs={(names.index(a),): [["tt.divisibility", 16]] for a in job["aligned"]})
    compiled = triton.compile(src, target=GPUTarget("cuda", job["cc"], 32),
                              options={"num_warps": job["num_warps"], "num_stages": job["num_stages"],
                                       **({"maxnreg": job["maxnreg"]} if job["maxnreg"] else {})})
    out = Path(job["out"])
    (out / f"{job['kernel']}.cubin").write_bytes(compiled.asm["cubin"])
    for ext in ("ptx", "ttgir"):
        (out / f"{job['kernel']}.{ext}").write_text(compiled.asm[ext])
    (out / "meta.json").write_text(json.dumps({"shared": int(compiled.metadata.shared)}))


def _cubin_resources(ptx: str, arch: str) -> tuple[int, int]:
    """Registers and spill bytes from ptxas -v on the PTX (what the driver would report)."""
    ptxas = _nvidia_tool("ptxas")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "k.ptx"
        p.write_text(ptx)
        sm = "sm_90a" if arch == "sm90" else f"sm_{arch[2:]}"
        r = subprocess.run([ptxas, "-v", f"--gpu-name={sm}", str(p), "-o", str(Path(d) / "k.o")],
                           check=False, capture_output=True, text=True)
    out = r.stdout + r.stderr
    if r.returncode:
        raise RuntimeError(f"ptxas failed on the generated kernel: {out.strip()[-400:]}")
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores", out)
    return int(regs.group(1)) if regs else 0, int(spill.group(1)) if spill else 0


def main(args) -> int:
    spec = ir.get_format(args.format, **args.options)
    N, K = args.shape
    cfg = KernelConfig(**json.loads(args.config)) if args.config else None
    rep = compile_report(spec, args.batch, N, K, args.arch, cfg, args.dtype, Path(args.dump) if args.dump else None)
    print(rep.table(args.top))
    return 0
