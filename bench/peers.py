"""The kernels people use today, called on the same shapes as quantcc's: each peer builds its own weights
from a random W with its own (or its origin's) quantizer, and knows its own dequantized reference, so its
output is checked the same way as ours before it is timed.

    gemlite_a16w4_g128   gemlite A16Wn, int4 asymmetric, group 128 (fp16; W ~ q*s + fp16(-z*s))
    gemlite_a16w2_g64    gemlite A16Wn, int2 asymmetric, group 64
    bnb_nf4_b64_dq       bitsandbytes NF4, block 64, double quant (its quantize_4bit / dequantize_4bit)
    tinygemm_int4_g128   torch aten._weight_int4pack_mm (bf16; W = (q - 8) * s + z, inner k tiles 8)
    fp8_cublas_w8a8      torch._scaled_mm, e4m3 weights and activations, per-tensor scales, fp16 out
                         (x is quantized outside the timed call: the time is the GEMM alone)

A peer that cannot run here (not installed, no CUDA, refused shape or M) raises PeerSkip with the reason;
the harness reports it as skipped, never as a zero time. On the CPU only the correctness check means
anything (tinygemm and fp8 have CPU kernels in torch; bitsandbytes has a CPU backend)."""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Callable

import torch


class PeerSkip(Exception):
    """The peer cannot run this case here; the message says why."""


@dataclass
class PeerCase:
    """One peer built for (N, K): `prepare(x)` (untimed: dtype casts, activation quantization) returns the
    argument of `call`, the timed operation; `reference(x)` is the peer's own math in float64."""
    call: Callable[[object], torch.Tensor]
    prepare: Callable[[torch.Tensor], object]
    reference: Callable[[torch.Tensor], torch.Tensor]
    stored_bytes: int
    x_dtype: torch.dtype
    x_bytes_per_elem: int
    note: str = ""
    keep: list = field(default_factory=list)   # tensors the peer's call needs alive


@dataclass(frozen=True)
class Peer:
    name: str
    klass: str              # the report's format class (for grouping in plots)
    bits: float             # nominal bits per weight, scales included, for 4096x4096
    dist: str | None        # the Python distribution it comes from (None: ships inside torch)
    build: Callable[[int, int, torch.device, torch.Generator], PeerCase]

    def version(self) -> str | None:
        if self.dist is None:
            return torch.__version__
        try:
            return importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError:
            return None


def _random_weight(N: int, K: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    return (torch.randn(N, K, generator=gen) * 0.02).to(device)


def _ref_matmul(x64: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    return x64 @ W.to(torch.float64).T


def _rtn_asym(W: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest asymmetric group quantization along K: integer codes q (uint8), fp16 scales and
    integer-valued fp16 zero points, each (N, K // group): W ~ (q - z) * s."""
    N, K = W.shape
    w = W.float().reshape(N, K // group, group)
    lo, hi = w.amin(-1), w.amax(-1)
    qmax = 2 ** bits - 1
    s = ((hi - lo) / qmax).clamp_min(1e-6).half()
    z = torch.round(-lo / s.float()).clamp(0, qmax)
    q = torch.round(w / s.float().unsqueeze(-1) + z.unsqueeze(-1)).clamp(0, qmax).to(torch.uint8)
    return q.reshape(N, K), s, z.half()


# ---------------------------------------------------------------------------------------------- gemlite
def _gemlite(bits: int, group: int):
    def build(N: int, K: int, device: torch.device, gen: torch.Generator) -> PeerCase:
        if device.type != "cuda":
            raise PeerSkip("gemlite needs CUDA (it reads the GPU's name at import)")
        try:
            from gemlite.helper import A16Wn
        except ImportError as e:
            raise PeerSkip(f"gemlite is not importable ({e}); carry its wheel (scripts/fetch_peer_wheels.sh)")
        if K % group:
            raise PeerSkip(f"K={K} is not a multiple of the group size {group}")
        q, s, z = _rtn_asym(_random_weight(N, K, device, gen), bits, group)
        layer = A16Wn(device=str(device), dtype=torch.float16).from_weights(
            q, s, z, W_nbits=bits, group_size=group)
        # gemlite's FMA mode stores fp16(-z*s) and decodes q*s + that (W_group_mode 4): its own reference.
        shift = (-z.float() * s.float()).half().float()
        W = (q.float().reshape(N, K // group, group) * s.float().unsqueeze(-1) + shift.unsqueeze(-1)).reshape(N, K)
        stored = sum(t.numel() * t.element_size() for t in (layer.W_q, layer.scales, layer.zeros))
        return PeerCase(call=layer, prepare=lambda x: x, reference=lambda x: _ref_matmul(x.double(), W),
                        stored_bytes=stored, x_dtype=torch.float16, x_bytes_per_elem=2, keep=[layer])
    return build


# ---------------------------------------------------------------------------------------- bitsandbytes
def _bnb_nf4(N: int, K: int, device: torch.device, gen: torch.Generator) -> PeerCase:
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnbF
    except ImportError as e:
        raise PeerSkip(f"bitsandbytes is not importable ({e}); carry its wheel (scripts/fetch_peer_wheels.sh)")
    W16 = _random_weight(N, K, device, gen).half()
    qw, qs = bnbF.quantize_4bit(W16, blocksize=64, compress_statistics=True, quant_type="nf4")
    W = bnbF.dequantize_4bit(qw, qs).float()
    stored = qw.numel() * qw.element_size() + qs.absmax.numel() * qs.absmax.element_size()
    if qs.nested:
        stored += sum(t.numel() * t.element_size() for t in (qs.state2.absmax, qs.state2.code))
    qwt = qw.t()
    return PeerCase(call=lambda x: bnb.matmul_4bit(x, qwt, quant_state=qs), prepare=lambda x: x,
                    reference=lambda x: _ref_matmul(x.double(), W), stored_bytes=stored,
                    x_dtype=torch.float16, x_bytes_per_elem=2, keep=[qw, qs])


# --------------------------------------------------------------------------------------------- tinygemm
def _tinygemm(N: int, K: int, device: torch.device, gen: torch.Generator) -> PeerCase:
    group, inner_k_tiles = 128, 8
    if K % (inner_k_tiles * 16) or N % 8:
        raise PeerSkip(f"tinygemm needs K % {inner_k_tiles * 16} == 0 and N % 8 == 0 (got N={N}, K={K})")
    Wf = _random_weight(N, K, device, gen).float().reshape(N, K // group, group)
    lo, hi = Wf.amin(-1, keepdim=True), Wf.amax(-1, keepdim=True)
    s = (hi - lo).clamp(min=1e-6) / 15
    zero = lo + s * 8                          # torch's convention: W = (q - 8) * s + zero
    q = ((Wf - lo) / s).round().clamp(0, 15).to(torch.int32).reshape(N, K)
    sz = torch.cat([s, zero], -1).to(torch.bfloat16)               # (N, K/g, 2)
    W = ((q.float().reshape(N, K // group, group) - 8) * sz[..., :1].float() + sz[..., 1:].float()).reshape(N, K)
    sz = sz.transpose(0, 1).contiguous()                            # (K/g, N, 2)
    if device.type == "cuda":
        packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8),
                                                            inner_k_tiles)
        mm = torch.ops.aten._weight_int4pack_mm
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, inner_k_tiles)
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
    stored = packed.numel() * packed.element_size() + sz.numel() * sz.element_size()
    return PeerCase(call=lambda x: mm(x, packed, group, sz), prepare=lambda x: x.to(torch.bfloat16),
                    reference=lambda x: _ref_matmul(x.to(torch.bfloat16).double(), W), stored_bytes=stored,
                    x_dtype=torch.bfloat16, x_bytes_per_elem=2, note="bf16 activations", keep=[packed, sz])


# ------------------------------------------------------------------------------------------ fp8 cuBLAS
def _fp8_w8a8(N: int, K: int, device: torch.device, gen: torch.Generator) -> PeerCase:
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        raise PeerSkip(f"torch {torch.__version__} has no _scaled_mm / float8_e4m3fn")
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise PeerSkip("fp8 GEMMs need sm89 or newer")
    W = _random_weight(N, K, device, gen).float()
    sw = (W.abs().amax() / 448.0).reshape(())
    wq = (W / sw).clamp(-448, 448).to(torch.float8_e4m3fn)
    sx = torch.tensor(1.0 / 64, device=device)      # a static activation scale: |x| <= 7 fits in e4m3
    Wd = wq.float() * sw
    wt = wq.t()                                      # column-major (K, N), as cuBLASLt wants

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / sx).clamp(-448, 448).to(torch.float8_e4m3fn)

    return PeerCase(call=lambda xq: torch._scaled_mm(xq, wt, scale_a=sx, scale_b=sw, out_dtype=torch.float16),
                    prepare=prepare, reference=lambda x: _ref_matmul(prepare(x).double() * sx.double(), Wd),
                    stored_bytes=wq.numel() + 8, x_dtype=torch.float16, x_bytes_per_elem=1,
                    note="per-tensor scales; x quantized outside the timed GEMM", keep=[wq, sw, sx])


PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("gemlite_a16w4_g128", "int4 (GPTQ-like)", 4 + 32 / 128, "gemlite", _gemlite(4, 128)),
    Peer("tinygemm_int4_g128", "int4 (GPTQ-like)", 4 + 32 / 128, None, _tinygemm),
    Peer("bnb_nf4_b64_dq", "4-bit other (GGUF, LUT, ...)", 4 + 8 / 64 + 32 / (64 * 256), "bitsandbytes", _bnb_nf4),
    Peer("gemlite_a16w2_g64", "2-3 bit scalar", 2 + 32 / 64, "gemlite", _gemlite(2, 64)),
    Peer("fp8_cublas_w8a8", "8-bit / act-quant", 8.0, None, _fp8_w8a8),
)}


def peer_names() -> list[str]:
    return list(PEERS)


def get_peer(name: str) -> Peer:
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; expected one of {sorted(PEERS)}")
    return PEERS[name]
