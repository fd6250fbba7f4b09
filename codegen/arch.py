"""Per-arch facts and the one heuristic `default_config(spec, problem, arch)`.

No template branches on the arch: they read plan fields that are derived here."""
from __future__ import annotations

from dataclasses import dataclass

from ir import FormatSpec, KernelConfig, SpecError


@dataclass(frozen=True, slots=True)
class Arch:
    name: str
    capability: tuple[int, int]
    smem_bytes: int          # max dynamic shared memory per block
    fp8: bool                # fp8 tensor-core dot (e4m3)
    int8_dot: bool
    sms: int                 # a typical SM count (for split-K heuristics; the runtime uses the real one)


ARCHES = {
    "sm80": Arch("sm80", (8, 0), 163 * 1024, False, True, 108),
    "sm86": Arch("sm86", (8, 6), 99 * 1024, False, True, 84),
    "sm89": Arch("sm89", (8, 9), 99 * 1024, True, True, 128),
    "sm90": Arch("sm90", (9, 0), 227 * 1024, True, True, 132),
}


def get_arch(name: str) -> Arch:
    if name not in ARCHES:
        raise SpecError(f"--arch {name!r} is not supported; expected one of {sorted(ARCHES)}")
    return ARCHES[name]


def arch_of_capability(major: int, minor: int) -> str:
    """Nearest supported arch at or below a device's compute capability."""
    best = None
    for a in ARCHES.values():
        if a.capability <= (major, minor) and (best is None or a.capability > best.capability):
            best = a
    if best is None:
        raise SpecError(f"compute capability {major}.{minor} is below the oldest supported arch sm80")
    return best.name


def check_arch_support(spec: FormatSpec, arch: Arch) -> None:
    """Refuse at build time what the arch cannot run."""
    aq = spec.act_quant
    if aq is not None and aq.kind == "fp8_e4m3" and not arch.fp8:
        raise SpecError(f"format {spec.name!r} needs fp8 (e4m3) tensor cores; arch {arch.name} has none "
                        f"(fp8 needs sm89 or sm90). Use the int8 variant or build for sm90.")
    if spec.decode.kind == "affine" and any(t.dtype == "float8_e4m3fn" for t in spec.tensors) and not arch.fp8:
        raise SpecError(f"format {spec.name!r} stores fp8 weights; arch {arch.name} has no fp8 support (sm89/sm90)")


def kernel_family(M: int) -> str:
    """gemv for a handful of rows (bandwidth-bound), gemm (tl.dot) above."""
    return "gemv" if M <= 4 else "gemm"


def _fill_split(tiles: int, K: int, block_k: int, target: int) -> int:
    """The smallest power-of-two split-K giving at least `target` programs, keeping >= 2 K-steps per split."""
    split = 1
    while tiles * split < target and K // (block_k * split * 2) >= 2:
        split *= 2
    return split


def default_config(spec: FormatSpec, problem: tuple[int, int, int], arch: str | Arch) -> KernelConfig:
    """A deterministic, legal config when the tuning database has no entry.

    Measured on the H100 (bench/results, gptq int4 g128): M=1 is best with 128-wide N tiles, 128-deep K
    tiles (inside one scale group, so the gemv family factors the scale out) and split-K to ~4 programs
    per SM; M=16 with 16x64x128 tl.dot tiles and split-K to ~2 programs per SM; M=128 with the weights as
    the MMA's A operand (swap_ab), 4 warps and split-K 2."""
    a = get_arch(arch) if isinstance(arch, str) else arch
    M, N, K = problem
    group = spec.param("group_size", spec.param("blocksize", 0))  # the scale group along K
    group = K if group == -1 else group
    block_k = 128
    if isinstance(group, int) and 32 <= group < block_k:
        block_k = group  # keep a tile inside one scale group
    if kernel_family(M) == "gemv":
        block_n = 128
        split = _fill_split(-(-N // block_n), K, block_k, 4 * a.sms)
        return KernelConfig(block_m=1 if M == 1 else 4, block_n=block_n, block_k=block_k, split_k=split,
                            num_warps=4, num_stages=3)
    block_m = 16 if M <= 16 else 64 if M <= 64 else 128
    if spec.act_quant is not None:
        return _act_quant_gemm_config(M, N, K, block_m, block_k, a)
    block_n = 64
    target = 2 * a.sms if block_m <= 16 else a.sms
    split = _fill_split(-(-N // block_n) * -(-M // block_m), K, block_k, target)
    swap = block_m > 16 and spec.act_quant is None
    # Formats without a fast decode path pipeline many gathered loads: with 3 stages their tiles overflow the
    # 227 KiB of an H100/H200 block (awq at M=300 needed 266 KB, int3 at M=16 319 KB), so the default is
    # 2 stages; the autotuner tries deeper pipelines where they fit.
    stages = 2
    return KernelConfig(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split, num_warps=4,
                        num_stages=stages, swap_ab=swap)


def _act_quant_gemm_config(M: int, N: int, K: int, block_m: int, block_k: int, a: Arch) -> KernelConfig:
    """Activation-quantized formats (x quantized once per call, int8 / fp8 codes in both MMA operands): the
    tiles are plain loads (w8a8) or a shift-only unpack (int4), so they pipeline deep with small shared memory.
    M <= 16: mma.sync 16x64x128 tiles, split-K to ~2 programs per SM as for the weight-only formats, 4 stages
    (30 KB). M > 16: wgmma 128-wide N tiles with 8 warps and 4 stages (104-128 KB, one program per SM) and
    the largest split-K that keeps one wave (tiles * split <= SMs), so no program waits for a second wave."""
    if block_m <= 16:
        split = _fill_split(-(-N // 64), K, block_k, 2 * a.sms)
        return KernelConfig(block_m=16, block_n=64, block_k=block_k, split_k=split, num_warps=4, num_stages=4)
    tiles = -(-N // 128) * -(-M // block_m)
    split = 1
    while tiles * split * 2 <= a.sms and K // (block_k * split * 2) >= 2:
        split *= 2
    return KernelConfig(block_m=block_m, block_n=128, block_k=block_k, split_k=split, num_warps=8, num_stages=4)
