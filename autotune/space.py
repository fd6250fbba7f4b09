"""The search space per (backend, arch, kernel family, M bucket), and the search order over it.

M is bucketed by `runtime.tuning.m_bucket`, the one documented function: the smallest of
1, 2, 4, 8, 16, 32, 64, 128, 256 that is >= M, and 512 for every M > 256. A bucket is tuned at
M = the bucket value (the largest M it holds; 512 stands for "large"), with the kernel family
`codegen.arch.kernel_family(bucket)`: gemv (broadcast-multiply-reduce, block_m 1..4 rows) up to
M = 4, gemm (tl.dot) above. The runtime dispatches every M of a bucket to the bucket's entry, except that for
M <= 4 it takes bucket 8's gemm config where that entry timed faster (runtime.tuning.lookup_config).

Candidates are the product of the per-axis ladders below (every knob the Triton templates expose:
block_m, block_n, block_k, split_k, num_warps, num_stages, the register cap maxnreg and the fp16 pair products
half_dot for gemv, swap_ab for gemm, and the weight stream's evict_first hint), pruned by
`autotune.prune` before anything compiles. That product is hundreds to a few thousand configs, far
more than a 10-20 s budget can compile, so `Search` walks it by coordinate descent from the heuristic
default (`codegen.arch.default_config`): it proposes the untried legal configs on the axis lines
through the best config so far (one axis changed, all its ladder values, nearest steps first; both axes
of a COUPLED pair changed together, too); the sweep measures them in chunks and re-centres on each new best, until nothing new is left around the
measured configs or the budget ends.
"""
from __future__ import annotations

import itertools
from dataclasses import replace

from codegen.arch import Arch, kernel_family
from ir import FormatSpec, KernelConfig, SpecError
from runtime.tuning import M_BUCKETS, m_bucket

from .prune import prune, reject_reason

__all__ = ["AXES", "BACKENDS", "COUPLED", "M_BUCKETS", "Search", "axes_for", "candidates", "m_bucket", "tuning_m"]

BACKENDS = ("triton",)   # "tvm" joins when its backend lands (issue 5): its own ladders go in AXES

AXES: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {
    ("triton", "gemv"): {
        "block_n": (16, 32, 64, 128, 256),
        "block_k": (32, 64, 128, 256, 512),
        "split_k": (1, 2, 4, 8, 16, 32),
        "num_warps": (1, 2, 4, 8),
        "num_stages": (1, 2),          # triton does not pipeline the gemv loop (1..4 compiled to the same SASS);
                                       # 2 is the template's register prefetch where the decode allows it
        "block_m": (1, 2, 4),
        "maxnreg": (0, 64, 80, 96, 128, 168),   # 0: the compiler's choice; a cap buys resident warps
        "evict_first": (False, True),  # the weight stream's loads hinted evict-first (ir.spec.KernelConfig)
        "half_dot": (False, True),     # fp16 pair products (HFMA2) where the decode has them; prune asks the
                                       # templates (H100 M=1: eqat_w2g128 46.4 -> 39.9 us, gptq 57.9 -> 54.9 us)
    },
    ("triton", "gemm"): {
        "block_n": (32, 64, 128, 256),
        "block_k": (32, 64, 128, 256),
        "split_k": (1, 2, 4, 8),
        "num_warps": (4, 8),
        "num_stages": (2, 3, 4, 5),
        "block_m": (16, 32, 64, 128),
        "swap_ab": (False, True),
        "evict_first": (False, True),
    },
}


# Axes whose best values depend on each other, proposed as pairs around a centre besides one at a time: the gemv
# register prefetch (num_stages 2) takes ~40 more registers per thread, so its value shows only under a register
# cap (int4 8192x28672 M=1 on the H100: p1 63.9 us, p2 66.8 us, p2 with maxnreg 128 59.3 us; the one-axis descent
# from the p1 winner never tried the pair).
COUPLED: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("triton", "gemv"): (("num_stages", "maxnreg"),),
}


def tuning_m(bucket: int, batches: list[int] | tuple[int, ...] = ()) -> int:
    """The M a bucket is tuned at: the bucket value, or the largest requested M above 256 for 512."""
    if bucket != 512:
        return bucket
    return max([b for b in batches if b > 256] or [512])


def axes_for(backend: str, family: str) -> dict[str, tuple[int, ...]]:
    if (backend, family) not in AXES:
        raise SpecError(f"no search space for backend {backend!r}, family {family!r}; "
                        f"known: {sorted(AXES)}")
    return AXES[(backend, family)]


def candidates(spec: FormatSpec, arch: Arch, M: int, N: int, K: int, backend: str = "triton",
               family: str | None = None) -> tuple[list[KernelConfig], list[tuple[KernelConfig, str]]]:
    """Every legal config for the problem (kept, in ladder order) and the rejected ones with reasons."""
    family = family or kernel_family(M)
    ax = axes_for(backend, family)
    names = list(ax)
    configs = (KernelConfig(**dict(zip(names, vals))) for vals in itertools.product(*(ax[n] for n in names)))
    return prune(spec, arch, family, M, N, K, configs)


class Search:
    """Coordinate descent over the legal configs (see the module docstring); remembers what it proposed."""

    def __init__(self, spec: FormatSpec, arch: Arch, M: int, N: int, K: int, backend: str = "triton",
                 family: str | None = None):
        self.spec, self.arch, self.M, self.N, self.K = spec, arch, M, N, K
        self.family = family or kernel_family(M)
        self.axes = axes_for(backend, self.family)
        self.coupled = COUPLED.get((backend, self.family), ())
        self.proposed: set[KernelConfig] = set()
        self._legal: dict[KernelConfig, bool] = {}

    def legal(self, c: KernelConfig) -> bool:
        if c not in self._legal:
            self._legal[c] = self.reason(c) is None
        return self._legal[c]

    def reason(self, c: KernelConfig) -> str | None:
        """Why `c` is outside this problem's space (autotune.prune's rule), or None."""
        return reject_reason(self.spec, self.arch, self.family, self.M, self.N, self.K, c)

    def mark(self, configs) -> None:
        """Record configs evaluated outside the search (the heuristic default)."""
        self.proposed.update(configs)

    def lines(self, center: KernelConfig) -> list[KernelConfig]:
        """Untried legal configs that differ from `center` in one axis, or in both axes of a COUPLED pair,
        nearest ladder steps first, and on/off axes first among equals."""
        steps = {}   # axis -> [(ladder steps from the centre's value, another value)]
        for name, ladder in self.axes.items():
            cur = getattr(center, name)
            pos = min(range(len(ladder)), key=lambda i: abs(ladder[i] - cur))
            steps[name] = [(abs(i - pos) or 1, v) for i, v in enumerate(ladder) if v != cur]
        by_distance: dict[int, list[KernelConfig]] = {}

        def propose(distance: int, **change) -> None:
            c = replace(center, **change)
            if c not in self.proposed and self.legal(c):
                by_distance.setdefault(distance, []).append(c)
        # on/off axes first at each distance: a flag flip (evict_first, half_dot) is the cheapest probe around a new
        # best, and listed last it fell past the budget (eqat_w2g128 28672x8192 M=1 on the H100: the descent ended
        # on m1n64k128s4w2p2r128e at 46.1 us, never timing its half_dot flip, 40.6 us)
        flags_first = sorted(steps, key=lambda name: set(self.axes[name]) != {False, True})
        for name in flags_first:
            for d, v in steps[name]:
                propose(d, **{name: v})
        for a, b in self.coupled:   # both axes changed: after the one-axis steps at the same ladder distance
            for (da, va), (db, vb) in itertools.product(steps[a], steps[b]):
                propose(max(da, db), **{a: va, b: vb})
        out = [c for d in sorted(by_distance) for c in by_distance[d]]
        self.proposed.update(out)
        return out
