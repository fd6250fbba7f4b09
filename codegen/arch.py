"""Per-arch facts and the one heuristic `default_config(spec, problem, arch)`.

No template branches on the arch: they read plan fields that are derived here."""
from __future__ import annotations

import math
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


_WORD_BITS = {"uint8": 8, "int8": 8, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64}


def word_atom_k(spec: FormatSpec) -> int:
    """Consecutive K indices whose codes share storage words (1 when codes are packed along N). When the
    decode spreads one word's codes `qs_plane` apart (GGUF: element e sits in byte e % qs_plane of its
    plane), the span is qs_plane x codes per word; straddling fields repeat every lcm(word, field) bits.
    A tile's block_k should be a multiple of it (autotune.prune enforces that for the candidates)."""
    p = spec.packing
    if p.axis != "K":
        return 1
    if p.straddle:
        word_bits = _WORD_BITS.get(p.word_dtype, 32)
        return word_bits // math.gcd(word_bits, p.field_bits)
    per_word = max(1, p.fields_per_word)
    plane = dict(spec.decode.params).get("qs_plane")
    if isinstance(plane, int) and per_word > 1:
        return plane * per_word
    return per_word


def _shift_decode(spec: FormatSpec) -> bool:
    """Weight-only codes packed along K, whole fields per word (no straddling), decoded by shift-and-mask
    (affine) or a small table (lut): the formats whose gemm tiles pipeline deep in little shared memory.
    Not awq (packed along N), 3-bit straddled fields, codebooks / trellises: their tiles gather."""
    p = spec.packing
    return (spec.act_quant is None and p.axis == "K" and not p.straddle and p.fields_per_word >= 1
            and spec.decode.kind in ("affine", "lut"))


def _pair_decode(spec: FormatSpec) -> bool:
    """The gptq / eqat 2- and 4-bit codes whose gemm tiles the templates build two fields per instruction,
    N-major, straight into the MMA operand (decode_tile_nk_fast): light tiles that want 4 warps."""
    return (spec.family in ("gptq", "eqat") and spec.decode.kind == "affine" and spec.decode.bits in (2, 4)
            and _shift_decode(spec) and not spec.param("desc_act", False))


def default_config(spec: FormatSpec, problem: tuple[int, int, int], arch: str | Arch) -> KernelConfig:
    """A deterministic, legal config when the tuning database has no entry.

    From the H100 tuning database (autotune/db/nvidia_h100_80gb_hbm3.json: 99 entries, gptq / int4 / awq /
    bnb_nf4 / gguf / eqat / int3 / w8a8 at 8 Llama shapes, M buckets 1 / 16 / 128; winners vs this
    heuristic, measured in the same run):
    - M=1 (gemv): 128-wide N tiles, 128-deep K tiles (inside one scale group, so the gemv family factors
      the scale out) and split-K to ~4 programs per SM: the winner itself in 19 of 33 entries. num_stages 2:
      triton does not pipeline the gemv loop (1..4 stages compiled to the same SASS; the default was 3),
      2 turns on the template's register prefetch where the format's decode allows it (session 5), with a
      register cap of 128 for the gptq / eqat 2- and 4-bit fields at M=1 (int4 8192x28672 on the H100, same run:
      m1n128k128s16w4p2 68.7 us, with maxnreg 128 62.0 us; 28672x8192 s4: 69.7 us, s16 with the cap 66.8 us).
    - M<=16 (gemm): 16x64 tl.dot tiles and split-K to ~2 programs per SM. For the shift-decoded
      weight-only formats, the weights as the MMA's A operand (swap_ab) with 3 stages (26 of 33 winners
      swap; gptq/int4 winners are 3-stage swaps at exactly this split); for table-decoded ones (bnb),
      128-wide N tiles, no swap, 3 stages. With more 64-wide N tiles than SMs (N >= 8448), the winners
      split to ~8 programs per SM, with block_k 64 where the storage words allow it.
    - M>16 (gemm): 64-wide N tiles, swap_ab, split-K to ~1 program per SM; with 128-row tiles (M > 64),
      8 warps and 3 stages for the int32-word affine and the table formats (22 of 33 winners use 8 warps).
    Session 3 (the gptq / eqat 2- and 4-bit pair decode, `_pair_decode`; 72 + 72 re-tuned entries): those
    keep block_k 128 and ~2 programs per SM at M <= 16 (winners m16n64k128, split 2-4) and 4 warps, 3 stages,
    swap at M > 64 (int4 8192x28672 M=128: 8 warps 286 us, 4 warps 168 us)."""
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
        # block_m: M's next power of two (1, 2 or 4 rows), the rows the gemv template broadcasts over
        # the packed-affine field path prefetches at num_stages 2 (~40 more registers): at M=1 with 128 weights per
        # thread, a cap of 128 registers keeps 16 warps per SM resident (no spills, offline SASS)
        cap = 128 if M == 1 and _pair_decode(spec) and block_n * block_k // (32 * 4) >= 128 else 0
        return KernelConfig(block_m=1 << (M - 1).bit_length(), block_n=block_n, block_k=block_k, split_k=split,
                            num_warps=4, num_stages=2, maxnreg=cap)
    block_m = 16 if M <= 16 else min(128, 1 << (M - 1).bit_length())   # no tile rows beyond M's power of two
    if spec.act_quant is not None:
        return _act_quant_gemm_config(M, N, K, block_m, block_k, a)
    block_n = 64
    tiles = -(-N // block_n) * -(-M // block_m)
    fast = _shift_decode(spec)
    # Formats without a fast decode path pipeline many gathered loads: with 3 stages their tiles overflow the
    # 227 KiB of an H100/H200 block (awq at M=300 needed 266 KB, int3 at M=16 319 KB), so they keep 2 stages
    # (and no swap at M <= 16); the autotuner tries deeper pipelines where they fit.
    stages, warps = 2, 4
    if block_m <= 16:
        target = 2 * a.sms
        if fast and tiles >= a.sms and not _pair_decode(spec):
            target = 8 * a.sms
            if block_k == 128 and 64 % word_atom_k(spec) == 0:
                block_k = 64
        swap = fast and spec.decode.kind == "affine"
        stages = 3 if fast else 2
        if fast and not swap:   # table decode (bnb): 128-wide N tiles, the split of the 64-wide ones
            split = _fill_split(tiles, K, block_k, target)
            return KernelConfig(block_m=block_m, block_n=128, block_k=block_k, split_k=split, num_warps=4,
                                num_stages=stages)
    else:
        target = a.sms
        swap = True
        if _pair_decode(spec):
            stages = 3
        elif fast and block_m == 128 and (spec.decode.kind == "lut" or spec.packing.word_dtype in ("int32", "uint32")):
            stages, warps = 3, 8
    split = _fill_split(tiles, K, block_k, target)
    return KernelConfig(block_m=block_m, block_n=block_n, block_k=block_k, split_k=split, num_warps=warps,
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
