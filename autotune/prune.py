"""Legality and sanity rules for tile configs, applied BEFORE anything is compiled.

`reject_reason(spec, arch, family, M, N, K, config)` returns None for a config worth compiling, or a
one-line reason. The rules, in order:

1. family contract: the gemv template takes block_m <= 4 rows (no tensor cores); the gemm template
   feeds tl.dot, which needs block_m, block_n, block_k >= 16 (codegen.plan.lower refuses the same);
   swap_ab (decoded weights as the MMA's A operand) exists only in gemm for weight-only formats.
   reg_prefetch (the gemm register prefetch) only where the templates can split the decode into loads and
   math: this one rule renders the kernel (configs that ask for it only) rather than restate their condition.
2. split-K: split_k * block_k <= K (lower refuses the same), and no split-K program may be left with
   an empty K range (the host gives each program cdiv(K, split_k * block_k) slices).
3. tile vs problem: a tile no larger than the next power of two of the dimension it covers (a
   bigger one only computes masked lanes); gemm block_m likewise vs M, gemv block_m between
   next_pow2(M) / 2 and next_pow2(M).
4. format granularity along K (from the IR, not from format names):
   - the word atom: how many consecutive K indices share storage words when codes are packed along
     K (8 for int4 in int32, 32 for 3-bit fields straddling 3 words, 32 / 64 / 128 for GGUF Q4_0 /
     Q4_K / Q2_K whose byte planes are 16 / 32 / 32 apart, 2 for a bnb byte). block_k must be a
     multiple of it, else neighbouring tiles both load the split words.
   - every top-level scale level grouped along K (gptq/awq group 128, bnb block 64, GGUF 32 and
     K-quant sub-blocks 16/32) must nest with the tile: block_k % g == 0 or g % block_k == 0, so a tile
     covers whole groups or sits inside one (one scale row per tile, no partial group re-reads).
5. shared memory: `smem_bytes` (below) must fit the arch's per-block limit.
6. register budget: `live_values_per_thread` (below) <= REG_VALUES[family], about the 255 x 32-bit
   registers a thread has. Beyond it ptxas spills, and compilation time explodes (a 1x256x512 gemv
   tile took 56 s to compile on a CPU; 1x128x256, 4 s). A register cap (maxnreg) is kept only when it
   leaves at least MAXNREG_MIN_SHARE of those live values in registers.

The smem and register figures are estimates, calibrated against triton 3.6 compiles for sm90 (registers:
`python -m codegen sass`, gptq 4096x4096, see `live_values_per_thread`)
(`metadata.shared` of gptq / gguf_q4_0 / bnb_nf4 / awq kernels, compiled on a CPU with
`triton.compile(..., target=GPUTarget("cuda", 90, 32))`): for the gemm family the compiled figure was
x tile + decoded w tile (activation dtype) + (num_stages - 1) x the packed w tile and its scales,
within 10%; the gemv family used up to 4 bytes per w-tile element (layout-conversion scratch for the
fp32 tile; 0 for some tiles) and never more than 64 KiB. A config that passes the estimate but still exceeds
the hardware fails at launch, scores infinity, and is logged; the estimate only saves compile time."""
from __future__ import annotations

import functools
import math

from codegen.arch import Arch, word_atom_k
from ir import FormatSpec, KernelConfig, SpecError

__all__ = ["k_groups", "live_values_per_thread", "prune", "reject_reason", "smem_bytes", "word_atom_k"]

REG_VALUES = {"gemv": 128, "gemm": 256}   # live 32-bit values per thread allowed (see live_values_per_thread)
MAXNREG_MIN_SHARE = 0.75   # a register cap below this share of the live values spills in the K loop (gptq gemv,
                           # 128 weights per thread, sm90: cap 96 spilled 52 B, 80 spilled 200 B, 64 spilled 352 B)
ACT_BYTES = 2           # float16 / bfloat16 activations; the decoded tile is cast to this before tl.dot


def next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def k_groups(spec: FormatSpec) -> tuple[int, ...]:
    """Sizes (in weights) of the top-level scale levels grouped along K. Nested levels are left out: their
    `size` counts weights in some formats (GGUF super-blocks) and parent scales in others (bnb nested absmax)."""
    return tuple(sorted({s.size for s in spec.scales
                         if s.granularity in ("group", "block") and s.axis == "K" and s.size > 0}))


def packed_tile_bytes(spec: FormatSpec, N: int, K: int, config: KernelConfig) -> int:
    """Bytes of stored tensors (codes and scales) one [block_k, block_n] tile reads."""
    return math.ceil(config.block_k * config.block_n * _bits_per_weight(spec, N, K) / 8)


@functools.lru_cache(maxsize=256)
def _bits_per_weight(spec: FormatSpec, N: int, K: int) -> float:
    return spec.bits_per_weight(N, K)


def smem_bytes(spec: FormatSpec, family: str, N: int, K: int, config: KernelConfig) -> int:
    """Estimated shared memory per program (see the module docstring for the calibration)."""
    c = config
    pipelined = (c.num_stages - 1) * packed_tile_bytes(spec, N, K, c)
    if family == "gemm":
        return c.block_m * c.block_k * ACT_BYTES + c.block_k * c.block_n * ACT_BYTES + pipelined
    return min(4 * c.block_k * c.block_n, 64 * 1024) + pipelined


def live_values_per_thread(family: str, config: KernelConfig, operand_bytes: int = ACT_BYTES) -> int:
    """32-bit values a thread keeps live in the inner loop. gemm: the fp32 accumulator, the decoded w tile
    and the x tile (ptxas on sm90: 16x64x128 / 4 warps estimated 88, used 95 registers; 64x64x128 160 vs
    147; 128x64x128 256 vs 246, no spills), allowed up to 256; operand tiles of `operand_bytes` per element
    count in proportion (int8 / fp8 operands of the activation-quantized formats: half of fp16's; prefixquant
    W4A4 128x128x256 / 8 warps estimated 192, used 231 registers, no spills; counted as fp16 it was refused at
    320, and measured 100.2 us on the H100 against the tuned 104.1). gemv: the decoded w tile; the broadcast
    product is reduced as it is formed (1x128x128 / 4 warps: 128 registers; 2 rows 72; 4 rows 255, no
    spills; 1x128x256 / 4 warps, 256 values, spilled 7 KB), allowed up to 128.
    With half_dot the gemv keeps the tile's packed words, not decoded weights, so a thread's weights count half
    (GGUF Q4_K m1n64k256s8w2h, 256 weights per thread: 96 registers, 70.7 us on the H100 against 84.7 for the best
    tile within the plain budget; int4 g128 at 256 weights per thread lost, 62-68 us against 54.5: the search
    times both)."""
    c, threads = config, 32 * config.num_warps
    w = c.block_k * c.block_n
    if family == "gemv":
        return w // threads // (2 if c.half_dot else 1)
    return (c.block_m * c.block_n + (w + c.block_m * c.block_k) * operand_bytes // ACT_BYTES) // threads


def operand_bytes(spec: FormatSpec) -> int:
    """Bytes per element of the gemm family's MMA operands: 1 (int8 / fp8) for activation-quantized formats, else
    x's float type."""
    return 1 if spec.act_quant is not None else ACT_BYTES


def reject_reason(spec: FormatSpec, arch: Arch, family: str, M: int, N: int, K: int,
                  config: KernelConfig) -> str | None:
    """None when `config` is worth compiling for this problem, else a one-line reason, "<rule>: <detail>"."""
    c = config
    if family == "gemv" and c.block_m > 4:
        return f"family: gemv takes block_m <= 4 rows, got {c.block_m}"
    if family == "gemm" and min(c.block_m, c.block_n, c.block_k) < 16:
        return "family: gemm (tl.dot) needs block_m, block_n, block_k >= 16"
    if c.swap_ab and (family != "gemm" or spec.act_quant is not None):
        return "family: swap_ab applies to the gemm family of weight-only formats"
    if c.reg_prefetch or c.half_dot:
        why = _render_refusal(spec, arch.name, family, M, N, K, c)
        if why:
            return f"decode: {why}"
    if c.split_k > 1:
        if c.split_k * c.block_k > K:
            return f"split-K: split_k {c.split_k} x block_k {c.block_k} > K {K}"
        iters = -(-K // (c.split_k * c.block_k))
        if (c.split_k - 1) * iters * c.block_k >= K:
            return f"split-K: split_k {c.split_k} leaves the last K slice empty ({iters} x {c.block_k} per slice)"
    if c.block_n > next_pow2(N) or c.block_k > next_pow2(K):
        return f"tile vs problem: n{c.block_n} k{c.block_k} exceeds N={N}, K={K}"
    if family == "gemm" and c.block_m > max(16, next_pow2(M)):
        return f"tile vs problem: block_m {c.block_m} > next power of two of M={M}"
    lo, hi = max(1, next_pow2(M) // 2), next_pow2(M)
    if family == "gemv" and not lo <= c.block_m <= hi:
        return f"tile vs problem: gemv block_m {c.block_m} is not in [{lo}, {hi}] for M={M}"
    atom = word_atom_k(spec)
    if atom & (atom - 1) == 0 and c.block_k % atom:  # (a non-power-of-two atom, e.g. 10 3-bit fields in an
        # int32, is split by every power-of-two tile: nothing to choose there)
        return f"granularity: block_k {c.block_k} splits storage words/blocks of {atom} K indices"
    for g in k_groups(spec):
        if c.block_k % g and g % c.block_k:
            return f"granularity: block_k {c.block_k} and the K group of {g} do not nest"
    smem = smem_bytes(spec, family, N, K, c)
    if smem > arch.smem_bytes:
        return f"shared memory: estimate {smem} B > {arch.smem_bytes} B on {arch.name}"
    regs = live_values_per_thread(family, c, operand_bytes(spec))
    if regs > REG_VALUES[family]:
        return f"register budget: {regs} live values per thread > {REG_VALUES[family]}"
    if c.maxnreg and c.maxnreg < MAXNREG_MIN_SHARE * regs:
        return (f"register cap: maxnreg {c.maxnreg} < {MAXNREG_MIN_SHARE:g} x the {regs} live values per thread "
                f"(ptxas would spill in the K loop)")
    return None


@functools.lru_cache(maxsize=4096)
def _render_refusal(spec: FormatSpec, arch: str, family: str, M: int, N: int, K: int,
                    c: KernelConfig) -> str | None:
    """Why the templates refuse an opt-in decode variant here (reg_prefetch, half_dot: they decide which decodes
    support it; the rule is not restated), or None. A render, only for configs that ask for one."""
    from codegen.plan import lower
    from codegen.triton_backend import render_triton
    try:
        render_triton(lower(spec, M, N, K, c, arch, family=family))
    except SpecError as e:
        return str(e)
    return None


def prune(spec: FormatSpec, arch: Arch, family: str, M: int, N: int, K: int,
          configs) -> tuple[list[KernelConfig], list[tuple[KernelConfig, str]]]:
    """(kept configs in input order, [(rejected config, reason)])."""
    kept, rejected = [], []
    for c in configs:
        why = reject_reason(spec, arch, family, M, N, K, c)
        if why is None:
            kept.append(c)
        else:
            rejected.append((c, why))
    return kept, rejected
