"""Autotune search space: the M-bucket function, candidate generation, pruning before compilation, the search order."""
import random

import pytest

import ir
from autotune.prune import k_groups, live_values_per_thread, reject_reason, smem_bytes, word_atom_k
from autotune.space import AXES, Search, candidates, m_bucket, tuning_m
from codegen.arch import default_config, get_arch, kernel_family
from codegen.plan import lower
from ir import KernelConfig

SM90, SM86 = get_arch("sm90"), get_arch("sm86")


def test_m_bucket_is_the_documented_function():
    assert [m_bucket(m) for m in (1, 2, 3, 4, 5, 8, 9, 16, 17, 100, 128, 129, 256)] == \
        [1, 2, 4, 4, 8, 8, 16, 16, 32, 128, 128, 256, 256]
    assert m_bucket(257) == m_bucket(100_000) == 512
    with pytest.raises(ValueError, match="M = 0 is invalid"):
        m_bucket(0)
    # a bucket is tuned at its largest M, with the family the runtime will dispatch to
    assert [tuning_m(b) for b in (1, 4, 16, 256)] == [1, 4, 16, 256]
    assert tuning_m(512, [1, 300, 2048]) == 2048 and tuning_m(512) == 512
    assert kernel_family(tuning_m(m_bucket(3))) == "gemv" and kernel_family(tuning_m(m_bucket(5))) == "gemm"


def test_format_granularity_comes_from_the_ir():
    atoms = {n: word_atom_k(ir.get_format(n)) for n in
             ("gptq", "awq", "gguf_q4_0", "gguf_q4_k", "gguf_q2_k", "gguf_q8_0", "bnb_nf4", "int3_g128_asym")}
    # int4 in int32 along K; AWQ packs along N; GGUF byte planes 16/32/32 apart x codes per byte; 3-bit straddle
    assert atoms == {"gptq": 8, "awq": 1, "gguf_q4_0": 32, "gguf_q4_k": 64, "gguf_q2_k": 128, "gguf_q8_0": 1,
                     "bnb_nf4": 2, "int3_g128_asym": 32}
    assert k_groups(ir.get_format("gptq")) == (128,)
    assert k_groups(ir.get_format("bnb_nf4")) == (64,)      # nested absmax blocks count absmax values, not weights
    assert k_groups(ir.get_format("gguf_q2_k")) == (16,)


@pytest.mark.parametrize("cfg, family, M, N, K, fmt, rule", [
    (KernelConfig(block_m=16, block_n=64, block_k=8), "gemm", 16, 4096, 4096, "gptq", "family"),
    (KernelConfig(block_m=8, block_n=64, block_k=64), "gemv", 4, 4096, 4096, "gptq", "family"),
    (KernelConfig(block_m=1, block_n=64, block_k=64, swap_ab=True), "gemv", 1, 4096, 4096, "gptq", "family"),
    (KernelConfig(block_m=1, block_n=64, block_k=256, split_k=32), "gemv", 1, 4096, 4096, "gptq", "split-K"),
    (KernelConfig(block_m=1, block_n=64, block_k=128, split_k=3), "gemv", 1, 4096, 512, "gptq", "split-K"),
    (KernelConfig(block_m=1, block_n=512, block_k=64, num_warps=8), "gemv", 1, 256, 4096, "gptq", "tile vs problem"),
    (KernelConfig(block_m=64, block_n=64, block_k=64), "gemm", 16, 4096, 4096, "gptq", "tile vs problem"),
    (KernelConfig(block_m=1, block_n=64, block_k=32), "gemv", 1, 4096, 4096, "gguf_q4_k", "granularity"),
    (KernelConfig(block_m=1, block_n=64, block_k=16, num_warps=2), "gemv", 1, 4096, 4096, "gguf_q4_0", "granularity"),
    (KernelConfig(block_m=128, block_n=256, block_k=256, num_warps=8, num_stages=5), "gemm", 128, 4096, 4096,
     "gptq", "shared memory"),
    (KernelConfig(block_m=1, block_n=256, block_k=512, num_warps=4), "gemv", 1, 4096, 4096, "gptq",
     "register budget"),
])
def test_each_rule_rejects(cfg, family, M, N, K, fmt, rule):
    why = reject_reason(ir.get_format(fmt), SM90, family, M, N, K, cfg)
    assert why is not None and why.startswith(rule + ":"), why


def test_shared_memory_depends_on_the_arch():
    spec = ir.get_format("gguf_q8_0")   # 8.5 bits per weight: the pipelined packed tiles are large
    cfg = KernelConfig(block_m=64, block_n=128, block_k=128, num_warps=8, num_stages=5)
    assert SM86.smem_bytes < smem_bytes(spec, "gemm", 4096, 4096, cfg) <= SM90.smem_bytes
    assert reject_reason(spec, SM90, "gemm", 64, 4096, 4096, cfg) is None
    assert reject_reason(spec, SM86, "gemm", 64, 4096, 4096, cfg).startswith("shared memory:")
    # more warps spread the same tile over more registers
    small = KernelConfig(block_m=128, block_n=128, block_k=64, num_warps=4)
    assert live_values_per_thread("gemm", small) == 2 * live_values_per_thread("gemm", KernelConfig(
        block_m=128, block_n=128, block_k=64, num_warps=8))


def test_register_budget_counts_int8_operands_by_their_bytes():
    """The gemm family's int8 / fp8 operand tiles hold 4 elements per register where fp16 holds 2: the W4A4 tile
    128x128x256 on 8 warps (231 registers measured, no spills) is kept for prefixquant, refused for gptq."""
    cfg = KernelConfig(block_m=128, block_n=128, block_k=256, split_k=2, num_warps=8, num_stages=3)
    assert live_values_per_thread("gemm", cfg, 1) == 192 and live_values_per_thread("gemm", cfg) == 320
    assert reject_reason(ir.get_format("prefixquant_w4a4"), SM90, "gemm", 128, 8192, 28672, cfg) is None
    assert reject_reason(ir.get_format("gptq"), SM90, "gemm", 128, 8192, 28672, cfg).startswith("register budget:")


def test_register_budget_counts_half_dot_words():
    """With half_dot the gemv keeps packed words, so its weights per thread count half: GGUF Q4_K's 1x64x256 tile on 2
    warps (256 weights per thread, 96 registers measured, the fastest Q4_K tile at M=1 on the H100) is kept with
    half_dot and refused without it."""
    import dataclasses
    cfg = KernelConfig(block_m=1, block_n=64, block_k=256, split_k=8, num_warps=2, half_dot=True)
    plain = dataclasses.replace(cfg, half_dot=False)
    assert live_values_per_thread("gemv", cfg) == 128 and live_values_per_thread("gemv", plain) == 256
    spec = ir.get_format("gguf_q4_k")
    assert reject_reason(spec, SM90, "gemv", 1, 8192, 28672, cfg) is None
    assert reject_reason(spec, SM90, "gemv", 1, 8192, 28672, plain).startswith("register budget:")


PROBLEMS = [("gptq", 1, 4096, 4096), ("awq", 16, 4096, 4096), ("gguf_q4_0", 4, 8192, 28672),
            ("bnb_nf4", 128, 4096, 4096), ("gguf_q4_k", 2, 4096, 4096), ("prefixquant_w4a4", 32, 4096, 4096)]


@pytest.mark.parametrize("fmt, M, N, K", PROBLEMS)
def test_every_kept_candidate_lowers(fmt, M, N, K):
    """Pruning is at least as strict as codegen: nothing that survives it is refused at build time."""
    spec = ir.get_format(fmt)
    kept, rejected = candidates(spec, SM90, M, N, K)
    family = kernel_family(M)
    names = list(AXES[("triton", family)])
    assert kept and rejected
    assert len(kept) + len(rejected) == len(set(kept) | {c for c, _ in rejected})
    for c in random.Random(0).sample(kept, min(40, len(kept))):
        assert reject_reason(spec, SM90, family, M, N, K, c) is None
        lower(spec, M, N, K, c, "sm90")
        assert all(getattr(c, n) in AXES[("triton", family)][n] for n in names)
    if spec.act_quant is not None:
        assert not any(c.swap_ab for c in kept)


def test_search_walks_axis_lines_from_the_default():
    spec = ir.get_format("gptq")
    M, N, K = 1, 4096, 4096
    s = Search(spec, SM90, M, N, K)
    d = default_config(spec, (M, N, K), "sm90")
    s.mark([d])
    first = s.lines(d)
    assert first and d not in first
    fields = ("block_m", "block_n", "block_k", "split_k", "num_warps", "num_stages", "swap_ab", "maxnreg", "evict_first",
              "half_dot")
    for c in first:
        changed = {f for f in fields if getattr(c, f) != getattr(d, f)}
        assert len(changed) == 1 or changed == {"num_stages", "maxnreg"}   # one axis, or the coupled pair
        assert reject_reason(spec, SM90, "gemv", M, N, K, c) is None      # only legal ones are proposed
    # nearest ladder steps come first
    ladder = AXES[("triton", "gemv")]["block_n"]
    steps = [abs(ladder.index(c.block_n) - ladder.index(d.block_n)) for c in first if c.block_n != d.block_n]
    assert steps and steps == sorted(steps)
    # the on/off axes' flips come first (the cheapest probes around a new best: listed last, they fell past the
    # 3 s budget on the H100), then the ladders' one-step neighbours
    flags = [f for f in fields if set(AXES[("triton", "gemv")].get(f, ())) == {False, True}]
    assert set(flags) == {"evict_first", "half_dot"}
    n_flags = sum(any(getattr(c, f) != getattr(d, f) for f in flags) for c in first)
    assert n_flags == 2    # gptq takes both hints at this config
    assert all(any(getattr(c, f) != getattr(d, f) for f in flags) for c in first[:n_flags])
    # nothing is proposed twice
    again = s.lines(d)
    assert again == []
    second = s.lines(first[0])
    assert not set(second) & set(first) and d not in second


LLAMA_SHAPES = [(4096, 4096), (6144, 4096), (14336, 4096), (4096, 14336), (8192, 8192), (10240, 8192),
                (28672, 8192), (8192, 28672)]


def test_the_default_is_a_centre_of_the_search_space():
    """The descent starts from the heuristic default: it must be a config the pruning keeps, else its
    one-axis neighbours are mostly pruned too and the first ring is empty. The one exception: split-K that
    leaves the last K slice empty at K=14336 (split 32 of 128-deep tiles), measured best on the H100."""
    outside = []
    for fmt in ir.list_formats():
        spec = ir.get_format(fmt)
        for N, K in LLAMA_SHAPES:
            try:
                spec.check_shape(N, K)
            except ir.SpecError:
                continue
            for bucket in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
                M = tuning_m(bucket)
                d = default_config(spec, (M, N, K), "sm90")
                why = reject_reason(spec, SM90, kernel_family(M), M, N, K, d)
                if why is not None:
                    outside.append((fmt, N, K, M, why))
    assert outside and all(K == 14336 and why.startswith("split-K") for _, _, K, _, why in outside), outside[:5]


def test_default_config_follows_the_h100_database():
    """The rules codegen.arch.default_config took from autotune/db/nvidia_h100_80gb_hbm3.json."""
    gptq, bnb, awq, int3 = (ir.get_format(f) for f in ("gptq", "bnb_nf4", "awq", "int3_g128_asym"))
    d = lambda spec, M, N, K: default_config(spec, (M, N, K), "sm90").label  # noqa: E731
    assert d(gptq, 1, 4096, 4096) == "m1n128k128s16w4p2r128"      # the M=1 winner + prefetch under a register cap
    assert d(gptq, 2, 4096, 4096).endswith("p2")                  # the cap only at M=1 (block_m 1)
    assert d(bnb, 1, 4096, 4096).endswith("p2")                   # bnb's prefetch needs its 168 registers
    assert d(gptq, 2, 4096, 4096).startswith("m2n128k128")        # gemv rows: M's next power of two
    assert d(gptq, 16, 4096, 4096) == "m16n64k128s8w4p3t"         # swap, 3 stages, ~2 programs per SM
    assert d(gptq, 16, 28672, 8192) == "m16n64k128s1w4p3t"        # pair decode: k128, ~2 programs per SM
    assert d(int3, 16, 28672, 8192).startswith("m16n64k128")      # (int3 is not shift-decoded: no k64 rule)
    assert d(gptq, 32, 4096, 4096).startswith("m32n64")           # no tile rows beyond M's power of two
    assert d(gptq, 128, 4096, 4096) == "m128n64k128s4w4p3t"       # pair decode: 4 warps, 3 stages, swap
    assert d(gptq, 128, 8192, 28672) == "m128n64k128s2w4p3t"      # the session-3 winner
    assert d(bnb, 16, 8192, 28672) == "m16n128k64s4w4p3"          # table decode: 128-wide N tiles, no swap
    assert d(bnb, 128, 4096, 4096) == "m128n64k64s4w8p3t"
    # gathered-load decodes keep 2 stages and no swap at M <= 16 (3 stages overflowed shared memory)
    assert d(awq, 16, 4096, 4096) == "m16n64k128s8w4p2" and d(int3, 16, 8192, 28672) == "m16n64k128s4w4p2"
    assert d(awq, 128, 4096, 4096) == "m128n64k128s4w4p2t"
    # a format whose storage words span 128 K indices keeps 128-deep tiles
    assert d(ir.get_format("gguf_q2_k"), 16, 28672, 8192).startswith("m16n64k128")


def test_search_proposes_the_coupled_pair():
    """The gemv register prefetch pays only under a register cap: from a p1 centre without a cap, the first ring
    holds p2 with each cap (both axes changed), which one-axis lines never reach."""
    spec = ir.get_format("int4_g128_asym")
    s = Search(spec, SM90, 1, 8192, 28672)
    center = ir.KernelConfig(block_m=1, block_n=64, block_k=128, split_k=8, num_warps=2, num_stages=1)
    s.mark([center])
    ring = s.lines(center)
    assert ir.KernelConfig(block_m=1, block_n=64, block_k=128, split_k=8, num_warps=2, num_stages=2,
                           maxnreg=128) in ring
    pairs = [c for c in ring if c.num_stages != center.num_stages and c.maxnreg != center.maxnreg]
    assert pairs and all(c.maxnreg >= 0.75 * 128 for c in pairs)   # the spill guard prunes the pairs too
    single = [c for c in ring if c not in pairs]
    assert ring.index(pairs[0]) > ring.index(single[0])   # one-axis steps of the same distance come first


def test_reg_prefetch_is_pruned_where_the_templates_refuse_it():
    """reg_prefetch is kept only where the gemm decode can split into loads and math (the templates decide; prune
    asks them): gptq with block_k inside a group yes; block_k 256 over 128-groups, awq, bnb, and gemv no."""
    from ir import KernelConfig
    gptq, awq, bnb = (ir.get_format(n) for n in ("gptq", "awq", "bnb_nf4"))
    ok = KernelConfig(block_m=16, block_n=64, block_k=128, split_k=4, num_stages=1, swap_ab=True, reg_prefetch=True)
    assert reject_reason(gptq, SM90, "gemm", 16, 8192, 28672, ok) is None
    wide = KernelConfig(block_m=16, block_n=64, block_k=256, num_stages=1, reg_prefetch=True)
    assert "reg_prefetch needs the gemm fast decode" in reject_reason(gptq, SM90, "gemm", 16, 8192, 28672, wide)
    for spec in (awq, bnb):
        assert reject_reason(spec, SM90, "gemm", 16, 8192, 28672, ok).startswith("decode: ")
    gemv = KernelConfig(block_m=1, block_n=64, block_k=128, reg_prefetch=True)
    assert "gemm family" in reject_reason(gptq, SM90, "gemv", 1, 8192, 28672, gemv)
