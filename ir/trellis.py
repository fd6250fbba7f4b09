"""Pure-torch helpers for bit-shift trellis and overlapping-window codes (QTIP, CCQ).

These are the reference twins of the kernels' decode helpers and the encoders' search:

- `bits_msb` / `words_from_bits_msb`: a word stream as bits, most significant bit first.
- `trellis_states`: the L-bit states of a tail-biting bitshift trellis (state t is bits
  [t*k, t*k + L) of the circular bit stream, k = bits per step).
- `pack_trellis`: the inverse (states -> words), checking that the states form one path.
- `window_fields`: unsigned bit fields `(code >> shift) & (2**width - 1)` of integer codes.
- `affine_round_code`: CCQ's cluster-index -> code map `int32(floor(fma(z, a, b) + 0.5))`,
  computed with float32 semantics exactly as a CUDA kernel built with nvcc's default
  `--fmad=true` does.
- `code_1mad`, `code_3inst`, `code_hyb`: QTIP's state -> value code functions.
- `viterbi`, `viterbi_tailbiting`: the minimum squared error path through a bitshift trellis
  (vectorized over a batch of sequences), the encoder of both QTIP and CCQ.

Integer tensors are int64 throughout; states and codes are non-negative.
"""
from __future__ import annotations

import torch

# QTIP's computed codes (Cornell-RelaxML/qtip lib/codebook/bitshift.py: decode_1mad, decode_3inst).
MAD_MUL, MAD_ADD, MAD_BIAS, MAD_DIV = 34038481, 76625530, 510, 147.800537109375
INST3_MUL, INST3_ADD, INST3_MASK, INST3_XOR = 89226354, 64248484, 0x8FFF8FFF, 0x3B603B60
_U32 = (1 << 32) - 1


def bits_msb(words: torch.Tensor, word_bits: int = 16) -> torch.Tensor:
    """Words (..., W) -> bits (..., W*word_bits) as int64 0/1, most significant bit of word 0 first."""
    w = words.to(torch.int64) & ((1 << word_bits) - 1)
    shifts = torch.arange(word_bits - 1, -1, -1, dtype=torch.int64)
    return ((w.unsqueeze(-1) >> shifts) & 1).reshape(*w.shape[:-1], -1)


def words_from_bits_msb(bits: torch.Tensor, word_bits: int = 16) -> torch.Tensor:
    """Bits (..., n) -> words (..., ceil(n/word_bits)) in [0, 2**word_bits), MSB first, zero padded."""
    n = bits.shape[-1]
    pad = -n % word_bits
    b = torch.nn.functional.pad(bits.to(torch.int64), (0, pad)).reshape(*bits.shape[:-1], -1, word_bits)
    weights = torch.tensor([1 << (word_bits - 1 - i) for i in range(word_bits)], dtype=torch.int64)
    return (b * weights).sum(-1)


def trellis_states(words: torch.Tensor, L: int, step_bits: int, n_states: int, word_bits: int = 16) -> torch.Tensor:
    """States of a tail-biting bitshift trellis: words (..., W) -> (..., n_states) int64.

    The stream holds n_states*step_bits bits (read MSB-first); state t is the L-bit integer of
    stream bits [t*step_bits, t*step_bits + L), wrapping around to the stream's start."""
    n_bits = n_states * step_bits
    bits = bits_msb(words, word_bits)[..., :n_bits]
    if bits.shape[-1] != n_bits:
        raise ValueError(f"trellis_states: {words.shape[-1]} words hold {bits.shape[-1]} bits < {n_bits}")
    ext = torch.cat([bits, bits[..., : L - step_bits]], dim=-1)
    windows = ext.unfold(-1, L, step_bits)[..., :n_states, :]
    weights = torch.tensor([1 << (L - 1 - i) for i in range(L)], dtype=torch.int64)
    return (windows * weights).sum(-1)


def pack_trellis(states: torch.Tensor, L: int, step_bits: int, word_bits: int = 16) -> torch.Tensor:
    """Inverse of `trellis_states`: states (..., T) of one tail-biting path -> words (..., ceil(T*k/word_bits)).

    Raises ValueError if consecutive states do not overlap (state t's top L-k bits must be state
    t-1's low L-k bits, cyclically)."""
    s = states.to(torch.int64)
    low = (1 << (L - step_bits)) - 1
    if not torch.equal(torch.roll(s, 1, dims=-1) & low, s >> step_bits):
        raise ValueError("pack_trellis: the states are not one tail-biting trellis path")
    new_bits = s & ((1 << step_bits) - 1)  # each state's last step_bits bits start at t*k + L - k
    shifts = torch.arange(step_bits - 1, -1, -1, dtype=torch.int64)
    stream = ((new_bits.unsqueeze(-1) >> shifts) & 1).reshape(*s.shape[:-1], -1)
    # stream is bits [L-k, T*k + L-k) of the circular stream: rotate it back to start at bit 0.
    stream = torch.roll(stream, L - step_bits, dims=-1)
    return words_from_bits_msb(stream, word_bits)


def window_fields(codes: torch.Tensor, shifts, width: int) -> torch.Tensor:
    """codes (...) -> (..., len(shifts)) unsigned fields (code >> shift) & (2**width - 1).

    Right shifts are arithmetic, as on a signed int32 in CUDA/Triton, so negative codes give the
    two's-complement bit pattern."""
    sh = torch.tensor(list(shifts), dtype=torch.int64)
    return (codes.to(torch.int64).unsqueeze(-1) >> sh) & ((1 << width) - 1)


def _fma_f32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fma(a, b, c) with one rounding (a, b, c float32; a*b exact in float64 when a has
    at most 29 significant bits, true for the 8-bit cluster indexes this is used with).

    The float64 sum is rounded to odd (TwoSum error term decides), so rounding that to float32
    is correctly rounded: no double-rounding error."""
    p = a.double() * b.double()
    cd = c.double()
    s = p + cd
    bb = s - p
    err = (p - (s - bb)) + (cd - bb)
    even = (s.view(torch.int64) & 1) == 0
    toward = torch.where(err > 0, torch.full_like(s, float("inf")), torch.full_like(s, float("-inf")))
    s = torch.where((err != 0) & even & torch.isfinite(s), torch.nextafter(s, toward), s)
    return s.float()


def affine_round_code(z: torch.Tensor, code_scale: torch.Tensor, code_zp: torch.Tensor) -> torch.Tensor:
    """CCQ's cluster index -> code: int32(floorf(fmaf(z, code_scale, code_zp) + 0.5f)) as int64.

    FastDeploy's wint2x_unzip.h writes `floor(z * code_scale + code_zp + 0.5)` in float; nvcc's
    default --fmad=true contracts `z * code_scale + code_zp` to one fma, then adds 0.5 with a
    second rounding. The float -> int32 conversion saturates (cvt.rzi.s32.f32) and maps NaN to 0.
    FastDeploy's Triton kernel converts to int16 instead; the two agree whenever the code lies
    in [-2**15, 2**15), which holds for every code whose windows fit in 15 bits."""
    x = _fma_f32(z.float(), code_scale.float(), code_zp.float()) + torch.tensor(0.5, dtype=torch.float32)
    x = torch.floor(x).double().clamp(-2.0 ** 31, 2.0 ** 31 - 1)
    return torch.nan_to_num(x, nan=0.0).to(torch.int64)


def code_1mad(states: torch.Tensor) -> torch.Tensor:
    """QTIP 1MAD: x = (a*s + b) mod 2**32; value = (sum of x's 4 bytes - 510) / 147.800537109375 (float32).
    Returns (..., 1) float32."""
    x = (states.to(torch.int64) * MAD_MUL + MAD_ADD) & _U32
    y = (x & 255) + ((x >> 8) & 255) + ((x >> 16) & 255) + ((x >> 24) & 255) - MAD_BIAS
    return (y.to(torch.float32) / MAD_DIV).unsqueeze(-1)


def _fp16_from_bits(bits: torch.Tensor) -> torch.Tensor:
    b = bits.to(torch.int64) & 0xFFFF
    return torch.where(b >= 1 << 15, b - (1 << 16), b).to(torch.int16).view(torch.float16)


def code_3inst(states: torch.Tensor) -> torch.Tensor:
    """QTIP 3INST: x = (a*s + b) mod 2**32; r = (x & 0x8FFF8FFF) ^ 0x3B603B60; value = fp16(r>>16) + fp16(r&0xFFFF),
    the sum rounded to fp16 (as torch's fp16 add). Returns (..., 1) float32."""
    x = (states.to(torch.int64) * INST3_MUL + INST3_ADD) & _U32
    r = (x & INST3_MASK) ^ INST3_XOR
    hi, lo = _fp16_from_bits(r >> 16), _fp16_from_bits(r)
    return (hi.float() + lo.float()).to(torch.float16).float().unsqueeze(-1)


def code_hyb(states: torch.Tensor, tlut: torch.Tensor, tlut_bits: int, L: int = 16) -> torch.Tensor:
    """QTIP HYB: h = s*(s+1); row = (h >> (L - Q - 1)) & (2**Q - 1); v = tlut[row] (fp16, V wide);
    value 0 is negated when bit L-1 of h is set. Returns (..., V) float32."""
    s = states.to(torch.int64)
    h = s * (s + 1)
    row = (h >> (L - tlut_bits - 1)) & ((1 << tlut_bits) - 1)
    vals = tlut.to(torch.float16)[row].float()
    sign = 1.0 - 2.0 * ((h >> (L - 1)) & 1).to(torch.float32)
    return torch.cat([vals[..., :1] * sign.unsqueeze(-1), vals[..., 1:]], dim=-1)


def _viterbi_chunk(X, lut, L, step_bits, first_top, last_low):
    B, T = X.shape
    V = lut.shape[1]
    steps = T // V
    n_states, n_pred, n_low = 1 << L, 1 << step_bits, 1 << (L - step_bits)
    dev = X.device
    lut = lut.to(dev, torch.float32)
    Xm2 = (-2.0 * X.to(torch.float32)).t().contiguous()  # (T, B)
    inf = torch.tensor(float("inf"), device=dev)

    # cost(s) = ||lut[s]||^2 - 2 <lut[s], x_t> + (best predecessor): squared error up to a per-step
    # constant, built in place in a (u, r, B) view with s = u * 2**k + r; u = s >> k is the low
    # L-k bits shared by all of s's predecessors.
    lsq = (lut * lut).sum(1).view(n_low, n_pred, 1)
    cols_v = [lut[:, v].contiguous().view(n_low, n_pred, 1) for v in range(V)]

    def step_cost(t, best_prev, out):
        if best_prev is None:
            out.copy_(lsq.expand(n_low, n_pred, B))
        else:
            torch.add(lsq, best_prev.view(n_low, 1, B), out=out)
        for v in range(V):
            out.addcmul_(cols_v[v], Xm2[t * V + v].view(1, 1, B))
        return out.view(n_states, B)

    state_ids = torch.arange(n_states, dtype=torch.int64, device=dev)
    start_mask = None
    cost, spare = step_cost(0, None, torch.empty(n_low, n_pred, B, device=dev)), torch.empty(n_low, n_pred, B, device=dev)
    if first_top is not None:
        start_mask = (state_ids.unsqueeze(1) >> step_bits) != first_top.unsqueeze(0)
        cost.masked_fill_(start_mask, inf)
    # mins[t][u, b]: cheapest path cost up to step t-1 over states whose low L-k bits are u
    # (the predecessors of every state whose top L-k bits are u). Backtracking recomputes the
    # predecessors' costs from it, so no argmin table is stored.
    mins = torch.empty(steps, n_low, B, device=dev)
    for t in range(1, steps):
        torch.amin(cost.view(n_pred, n_low, B), dim=0, out=mins[t])
        cost, spare = step_cost(t, mins[t], spare), cost.view(n_low, n_pred, B)
    if last_low is not None:
        cost = cost.masked_fill((state_ids.unsqueeze(1) & (n_low - 1)) != last_low.unsqueeze(0), inf)
    out = torch.empty(B, steps, dtype=torch.int64, device=dev)
    s = cost.argmin(0)
    out[:, -1] = s
    cols = torch.arange(B, device=dev)
    pred_top = torch.arange(n_pred, dtype=torch.int64, device=dev).unsqueeze(1) << (L - step_bits)
    for t in range(steps - 1, 0, -1):
        u = s >> step_bits
        preds = pred_top | u.unsqueeze(0)  # (n_pred, B)
        x = X[:, (t - 1) * V:t * V].to(torch.float32)  # (B, V)
        lp = lut[preds]  # (n_pred, B, V)
        c = (lp * lp).sum(-1) - 2.0 * (lp * x.unsqueeze(0)).sum(-1)
        if t - 1 == 0:
            if start_mask is not None:
                c = c.masked_fill(start_mask[preds, cols.unsqueeze(0)], inf)
        else:
            c = c + mins[t - 1][preds >> step_bits, cols.unsqueeze(0)]
        s = preds[c.argmin(0), cols]
        out[:, t - 1] = s
    return out


def viterbi(X: torch.Tensor, lut: torch.Tensor, L: int, step_bits: int, first_top: torch.Tensor | None = None,
            last_low: torch.Tensor | None = None, max_bytes: int | None = None) -> torch.Tensor:
    """Minimum squared error state path through a bitshift trellis, for each row of X.

    X (B, T) targets; lut (2**L, V) the value(s) each L-bit state decodes to; consecutive states
    s, s' satisfy s' >> step_bits == s & (2**(L-step_bits) - 1). Returns states (B, T//V) int64.
    Optional constraints: first_top (B,) fixes the first state's top L-step_bits bits, last_low
    (B,) fixes the last state's low L-step_bits bits. Runs on X's device. Cost per sequence: T/V
    steps over 2**L states; memory (T/V) * 2**(L-step_bits) floats per sequence (rows are
    processed in chunks of at most `max_bytes` of working memory: default 256 MiB, 8 GiB on CUDA)."""
    B, T = X.shape
    if lut.shape[0] != 1 << L or T % lut.shape[1]:
        raise ValueError(f"viterbi: lut {tuple(lut.shape)} / sequence length {T} do not fit L={L}")
    max_bytes = max_bytes or (1 << 33 if X.is_cuda else 1 << 28)
    per_row = 4 * ((T // lut.shape[1]) * (1 << (L - step_bits)) + 3 * (1 << L))
    chunk = max(1, min(B, max_bytes // per_row))
    outs = []
    for i in range(0, B, chunk):
        ft = None if first_top is None else first_top[i:i + chunk]
        ll = None if last_low is None else last_low[i:i + chunk]
        outs.append(_viterbi_chunk(X[i:i + chunk], lut, L, step_bits, ft, ll))
    return torch.cat(outs, 0) if outs else torch.empty(0, T // lut.shape[1], dtype=torch.int64, device=X.device)


def viterbi_tailbiting(X: torch.Tensor, lut: torch.Tensor, L: int, step_bits: int) -> torch.Tensor:
    """Tail-biting trellis quantization of each row of X (QTIP's two-pass scheme).

    Pass 1 runs an unconstrained Viterbi on the sequence rotated by half its length and reads
    the state it chose at the original start; pass 2 reruns on the original sequence with the
    first state's top L-k bits and the last state's low L-k bits both fixed to that state's top
    L-k bits, so the path wraps around. Costs two Viterbi passes."""
    V = lut.shape[1]
    steps = X.shape[1] // V
    half = steps // 2
    first = viterbi(torch.roll(X, half * V, dims=1), lut, L, step_bits)
    overlap = first[:, half] >> step_bits
    return viterbi(X, lut, L, step_bits, first_top=overlap, last_low=overlap)
