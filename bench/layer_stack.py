"""The layer stack `python -m bench layers` times (bench/layers.py says what it measures): Llama decoder layers'
linears with fp16 torch glue, their quantized and reference builds, the norm calibration and the correctness
check."""
from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

import ir
from ir.synthetic import synthetic_quantized

LLAMA3_8B = {"hidden": 4096, "kv": 1024, "inter": 14336, "heads": 32, "kv_heads": 8}
LINEAR_TOL = 5e-3   # ||y - ref|| / ||ref|| per linear: fp16 output, float32 accumulation (as bench run)
STACK_TOL = 2e-2    # the whole stack vs float32: fp16 activations rounded at every op of 2L blocks ...
FLOOR_FACTOR = 3    # ... or 3x the error of the same decoded weights run as fp16 nn.Linear, if that is larger
EPS = 1e-5


# ----------------------------------------------------------------------------------------------- the stack
def linear_shapes(d: dict) -> dict[str, tuple[int, int]]:
    """(N, K) of one decoder layer's linears, by their Llama module names."""
    h, kv, i = d["hidden"], d["kv"], d["inter"]
    return {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, kv_heads: int,
              scale: float | None = None) -> torch.Tensor:
    """Causal grouped-query attention over the M rows as one sequence: (M, heads*d) from q (M, heads*d) and
    k, v (M, kv_heads*d); logits q.k * scale (default 1/sqrt(d))."""
    M = q.shape[0]
    d = q.shape[1] // heads
    q = q.view(M, heads, d).transpose(0, 1).unsqueeze(0)
    k = k.view(M, kv_heads, d).transpose(0, 1).unsqueeze(0)
    v = v.view(M, kv_heads, d).transpose(0, 1).unsqueeze(0)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    return o.squeeze(0).transpose(0, 1).reshape(M, heads * d)


class _Attention(nn.Module):
    def __init__(self, make, prefix: str, shapes: dict, heads: int, kv_heads: int):
        super().__init__()
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, n, make(f"{prefix}.{n}", *shapes[f"self_attn.{n}"]))
        self.heads, self.kv_heads = heads, kv_heads
        self.scale = None  # the logits' scale; calibrate sets it

    def forward(self, h):
        return self.o_proj(attention(self.q_proj(h), self.k_proj(h), self.v_proj(h), self.heads, self.kv_heads,
                                     self.scale))

    def calibrate_scale(self, h) -> None:
        """Scale the logits to unit std on `h`: 1 / (sqrt(d) rms(q) rms(k)). Trained q and k are O(1); random
        codes can make them large, and then softmax is an argmax that fp16 rounding flips."""
        d = self.q_proj.out_features // self.heads
        rq, rk = (float(p(h).float().pow(2).mean().sqrt()) for p in (self.q_proj, self.k_proj))
        self.scale = 1.0 / (math.sqrt(d) * max(rq * rk, 1e-30))


class _Mlp(nn.Module):
    def __init__(self, make, prefix: str, shapes: dict):
        super().__init__()
        for n in ("gate_proj", "up_proj", "down_proj"):
            setattr(self, n, make(f"{prefix}.{n}", *shapes[f"mlp.{n}"]))

    def forward(self, h):
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class _Layer(nn.Module):
    def __init__(self, make, i: int, d: dict, dtype: torch.dtype, device):
        super().__init__()
        shapes = linear_shapes(d)
        self.self_attn = _Attention(make, f"layers.{i}.self_attn", shapes, d["heads"], d["kv_heads"])
        self.mlp = _Mlp(make, f"layers.{i}.mlp", shapes)
        self.register_buffer("g_attn", torch.ones(d["hidden"], dtype=dtype, device=device))
        self.register_buffer("g_mlp", torch.ones(d["hidden"], dtype=dtype, device=device))

    def blocks(self):
        """(norm weight, block) in the order the forward applies them."""
        return ((self.g_attn, self.self_attn), (self.g_mlp, self.mlp))

    def forward(self, x):
        for g, block in self.blocks():
            x = x + block(F.rms_norm(x, g.shape, g, EPS))
        return x


class Stack(nn.Module):
    """L decoder layers' linears and the glue between them (module docstring). `make(name, N, K)` builds each
    linear; activations and the norm weights are `dtype`; the norm weights are set by `calibrate`."""

    def __init__(self, d: dict, layers: int, make, dtype: torch.dtype, device):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(make, i, d, dtype, device) for i in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def linears(self) -> dict[str, nn.Module]:
        return {n: m for n, m in self.named_modules() if n.endswith("_proj")}

    def calibration(self) -> list[tuple[float, float | None]]:
        """(norm weight, attention scale or None) per block, in forward order."""
        return [(float(g[0]), getattr(b, "scale", None)) for layer in self.layers for g, b in layer.blocks()]

    def set_calibration(self, cal: list[tuple[float, float | None]]) -> "Stack":
        for (g, block), (v, scale) in zip((gb for layer in self.layers for gb in layer.blocks()), cal, strict=True):
            g.fill_(v)
            if scale is not None:
                block.scale = scale
        return self


def calibrate(stack: Stack, x: torch.Tensor, steps: int = 8) -> Stack:
    """Set each norm weight (one value per norm) so that its block adds an update of rms 1 to the residual
    stream on `x`, layer by layer, as trained models keep it, and each attention's logit scale
    (_Attention.calibrate_scale). Synthetic codes are not trained weights: some (GGUF K-quant's random
    sub-scales and mins) have a large common mean, so a fixed gain would grow the residual coherently by
    ~mean * K per linear and overflow fp16 within a layer. The block output's rms is ~ gain^p with p in
    [1, 2] (attention is linear in v, the MLP about quadratic): a secant search on log gain finds it in a few
    block evaluations."""
    with torch.no_grad():
        x = x.to(stack.layers[0].g_attn.dtype)
        for layer in stack.layers:
            for g, block in layer.blocks():
                def log_rms(lg):
                    g.fill_(math.exp(lg))
                    h = F.rms_norm(x, g.shape, g, EPS)
                    if isinstance(block, _Attention):
                        block.calibrate_scale(h)
                    return math.log(float(block(h).float().pow(2).mean().sqrt()) + 1e-30)
                lg0 = -0.5 * math.log(g.numel())
                r0 = log_rms(lg0)
                lg1 = lg0 - r0
                for _ in range(steps):
                    r1 = log_rms(lg1)
                    if abs(r1) < 0.02 or not math.isfinite(r1):
                        break
                    slope = (r1 - r0) / (lg1 - lg0) if lg1 != lg0 else 1.0
                    slope = min(max(slope, 0.5), 3.0) if math.isfinite(slope) else 1.0
                    lg0, r0, lg1 = lg1, r1, lg1 - r1 / slope
                log_rms(lg1)
                x = x + block(F.rms_norm(x, g.shape, g, EPS))
    return stack


def dense(W: torch.Tensor) -> nn.Linear:
    """An nn.Linear (no bias) holding W (N, K) as is."""
    lin = nn.Linear(W.shape[1], W.shape[0], bias=False, device="meta")
    lin.weight = nn.Parameter(W, requires_grad=False)
    return lin


def fp16_stack(d: dict, layers: int, device, seed: int = 0) -> Stack:
    g = torch.Generator(device).manual_seed(seed)

    def make(name, N, K):
        return dense((torch.randn(N, K, generator=g, device=device) * 0.02).half())
    return calibrate(Stack(d, layers, make, torch.float16, device), calibration_x(d["hidden"], device))


def calibration_x(hidden: int, device) -> torch.Tensor:
    """8 rows of N(0, 1): the input the norm weights are calibrated on (the same for every stack)."""
    return sample_x(8, hidden, device, salt="calibration")


def layer_seed(fmt: str, name: str, salt: int = 0) -> int:
    return zlib.crc32(f"{fmt}|{name}|{salt}".encode()) & 0xFFFF


def synthesize(spec, d: dict, layers: int, pool=None) -> dict:
    """name -> future of (or, without a pool, the) synthetic QuantizedTensor for every linear of the stack."""
    out = {}
    shapes = linear_shapes(d)
    for i in range(layers):
        for n, (N, K) in shapes.items():
            name = f"layers.{i}.{n}"
            args = (spec, N, K, layer_seed(spec.name, name))
            out[name] = pool.submit(synthetic_quantized, *args) if pool else synthetic_quantized(*args)
    return out


class QuantStack:
    """A format's quantized stack, its float32 reference weights and the float32 reference stack."""

    def __init__(self, spec, d: dict, layers: int, qts: dict, device):
        from runtime import QuantLinear
        self.W = {n: ir.dequantize(qt, device=device).to(device) for n, qt in qts.items()}
        self.ref = calibrate(Stack(d, layers, lambda n, N, K: dense(self.W[n]), torch.float32, device),
                             calibration_x(d["hidden"], device))
        self.stack = Stack(d, layers, lambda n, N, K: QuantLinear.from_quantized(qts[n].to(device)),
                           torch.float16, device).set_calibration(self.ref.calibration())
        self.weight_bytes = sum(t.numel() * t.element_size() for m in self.stack.linears().values()
                                for t in m.tensors.values())
        self.spec, self.d, self.layers, self.device = spec, d, layers, device

    def corrupt(self, name: str) -> None:
        """Swap linear `name`'s tensors for another valid draw, keeping the reference: the gate must fail."""
        from runtime import QuantLinear
        lins = self.stack.linears()
        if name not in lins:
            raise SystemExit(f"bench layers: --corrupt {name!r} names no linear; expected one of {sorted(lins)}")
        N, K = lins[name].out_features, lins[name].in_features
        qt = synthetic_quantized(self.spec, N, K, layer_seed(self.spec.name, name, salt=1))
        parent, _, child = name.rpartition(".")
        setattr(self.stack.get_submodule(parent), child, QuantLinear.from_quantized(qt.to(self.device)))

    def fp16_floor(self, x: torch.Tensor, ref: torch.Tensor) -> float:
        """rel err of the decoded weights run as an fp16 nn.Linear stack: the rounding floor, for scale."""
        s = Stack(self.d, self.layers, lambda n, N, K: dense(self.W[n].half()), torch.float16,
                  self.device).set_calibration(self.ref.calibration())
        with torch.no_grad():
            return rel_err(s(x), ref)


# ----------------------------------------------------------------------------------------------- checks
def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in float64; NaN or inf in y gives inf."""
    d = (y.double() - ref.double()).nan_to_num(nan=math.inf, posinf=math.inf, neginf=math.inf)
    return float(d.norm() / ref.double().norm().clamp_min(1e-30))


def check(qs: QuantStack, x: torch.Tensor) -> dict:
    """Per-linear and whole-stack errors against the float32 reference; status ok or FAILED with the reason."""
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, (inp[0], out)))
             for n, m in qs.stack.linears().items()]
    try:
        with torch.no_grad():
            y = qs.stack(x)
            ref = qs.ref(x.float())
            lin = {n: rel_err(out, inp.float() @ qs.W[n].T) for n, (inp, out) in seen.items()}
    finally:
        for h in hooks:
            h.remove()
    worst = max(lin, key=lin.get)
    out = {"status": "ok", "reason": None, "linear_err": lin[worst], "worst_linear": worst,
           "stack_err": rel_err(y, ref), "fp16_floor_err": qs.fp16_floor(x, ref)}
    bad = [f"{n} rel err {e:.2e} > {LINEAR_TOL:.0e}" for n, e in lin.items() if not e <= LINEAR_TOL]
    tol = max(STACK_TOL, FLOOR_FACTOR * out["fp16_floor_err"])
    if not out["stack_err"] <= tol:
        bad.append(f"stack output rel err {out['stack_err']:.2e} > {tol:.1e}")
    if bad:
        out.update(status="FAILED", reason="; ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""))
    out["y"], out["ref"] = y, ref
    return out


def sample_x(M: int, hidden: int, device, salt: str = "x") -> torch.Tensor:
    """M rows of N(0, 1) in fp16, seeded by (salt, M, hidden)."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{salt}|{M}|{hidden}".encode()))
    return torch.randn(M, hidden, generator=g).to(device=device, dtype=torch.float16)
