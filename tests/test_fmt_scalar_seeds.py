"""matryoshka, prefixquant_w4a4, w8a8_static, watersic: IR description, round-trip bounds, rejection,
and bit-exactness against hand transcriptions of each origin's decode (none of the origins is
installable here: MatGPTQ and PrefixQuant need CUDA builds, compressed-tensors/vLLM are not in the
environment, and WaterSIC is a research repository).

Error bounds are derived in comments next to each assertion. "Ideal uniform" below is the MSE of
the best symmetric 2**b-level uniform quantizer for a unit Gaussian (Max 1960; computed here by
numerical integration): 0.1188 (2 bits), 0.03744 (3), 0.01154 (4)."""
import functools
import math

import pytest
import torch

import ir
from ir import QuantizedTensor, SpecError
from ir.formats.matryoshka import parent_codes, quantize_parent, serve_from_parent, slice_parent
from ir.formats.prefixquant import act_scale_from_absmax, weight_codes
from ir.formats.prefixquant import quantize_activation as pq_quantize_activation
from ir.formats.w8a8 import quantize_activation as w8_quantize_activation
from ir.formats.watersic import CLIP_FACTORS, sic_decode, watersic_codes
from ir.hadamard import block_hadamard

N, K = 64, 512

ALL = [
    ("matryoshka", dict(r=8)), ("matryoshka", dict(r=4)), ("matryoshka", dict(r=3, sym=True)),
    ("matryoshka", dict(r=6, group_size=64)), ("matryoshka", dict(r=2, group_size=32)),
    ("prefixquant_w4a4", dict()), ("prefixquant_w4a4", dict(online_hadamard=True, had_size=64)),
    ("w8a8_static", dict(weight="int8")), ("w8a8_static", dict(weight="fp8_e4m3")),
    ("watersic", dict(bits=2)), ("watersic", dict(bits=3)), ("watersic", dict(bits=4)), ("watersic", dict(bits=8)),
]
IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in o.items())}" for n, o in ALL]


def _weights(gen, n=N, k=K, std=0.02):
    return torch.randn(n, k, generator=gen) * std


def _encode(name, W, **opts):
    spec = ir.get_format(name, **opts)
    qt = ir.quantize(spec, W)
    return spec, qt, ir.dequantize(qt)


@functools.lru_cache(maxsize=None)
def ideal_uniform_rel_rms(bits: int) -> float:
    """sqrt(min_step E[(X - Q(X))^2]), X ~ N(0, 1), Q the symmetric midrise uniform quantizer with 2**bits levels.
    Per cell [a, b] with level c: E = dPhi - [x phi(x)]_a^b - 2c (phi(a) - phi(b)) + c^2 dPhi (closed form);
    golden-section search over log(step), the MSE being unimodal in the step."""
    half = 2 ** (bits - 1)
    j = torch.arange(-half, half, dtype=torch.float64)

    def mse(log_step):
        d = math.exp(log_step)
        a, b, c = j * d, (j + 1) * d, (j + 0.5) * d
        a[0], b[-1] = -math.inf, math.inf
        phi = lambda x: torch.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi)   # noqa: E731
        xphi = lambda x: torch.where(torch.isinf(x), 0.0, x * phi(x))     # noqa: E731
        dP = torch.special.ndtr(b) - torch.special.ndtr(a)
        return float((dP - (xphi(b) - xphi(a)) - 2 * c * (phi(a) - phi(b)) + c ** 2 * dP).sum())

    lo, hi, g = math.log(1e-3), math.log(4.0), (math.sqrt(5) - 1) / 2
    for _ in range(60):
        x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, x2) if mse(x1) < mse(x2) else (x1, hi)
    return math.sqrt(mse((lo + hi) / 2))


def test_ideal_uniform_matches_max_1960():
    for bits, want in ((2, 0.1188), (3, 0.03744), (4, 0.01154)):
        assert ideal_uniform_rel_rms(bits) ** 2 == pytest.approx(want, rel=2e-3)


# -- common: determinism, JSON, keys, schema, rejection --------------------------------------------------
@pytest.mark.parametrize("name, opts", ALL, ids=IDS)
def test_deterministic_and_schema(name, opts, gen):
    W = _weights(gen)
    spec, qt, Wq = _encode(name, W, **opts)
    qt2 = ir.quantize(spec, W.clone())
    assert qt.tensors.keys() == qt2.tensors.keys()
    for k in qt.tensors:
        assert torch.equal(qt.tensors[k].view(torch.uint8), qt2.tensors[k].view(torch.uint8)), k
    assert torch.equal(Wq, ir.dequantize(qt2)) and torch.equal(Wq, ir.dequantize(qt))
    assert Wq.dtype == torch.float32 and Wq.shape == (N, K)
    schema = spec.tensor_schema(N, K)
    assert {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in qt.tensors.items()} == schema
    assert qt.nbytes == spec.stored_bytes(N, K)


@pytest.mark.parametrize("name, opts", ALL, ids=IDS)
def test_zero_and_half_weights(name, opts, gen):
    spec = ir.get_format(name, **opts)
    assert torch.equal(ir.dequantize(ir.quantize(spec, torch.zeros(8, 256))), torch.zeros(8, 256))  # degenerate rows
    W = _weights(gen, 8, 256).half()
    assert torch.equal(ir.dequantize(ir.quantize(spec, W)), ir.dequantize(ir.quantize(spec, W.float())))


@pytest.mark.parametrize("name, opts", ALL, ids=IDS)
def test_json_round_trip_and_key(name, opts):
    spec = ir.get_format(name, **opts)
    back = ir.FormatSpec.from_json(spec.to_json())
    assert back == spec and back.key == spec.key
    assert ir.get_format(name, **opts).key == spec.key


def test_keys_differ_across_options():
    keys = [ir.get_format(n, **o).key for n, o in ALL]
    assert len(set(keys)) == len(keys)
    assert ir.get_format("matryoshka", r=4).key != ir.get_format("matryoshka", r=4, sym=True).key
    # had_size is irrelevant without the online Hadamard and is normalized away
    assert ir.get_format("prefixquant_w4a4", had_size=64).key == ir.get_format("prefixquant_w4a4").key


@pytest.mark.parametrize("name, opts, match", [
    ("matryoshka", dict(r=5), r"option r = 5 is invalid; expected one of \[2, 3, 4, 6, 8\]"),
    ("matryoshka", dict(r=True), r"option r = True"),
    ("matryoshka", dict(group_size=100), r"group_size = 100 is invalid"),
    ("matryoshka", dict(sym="yes"), r"sym = 'yes' is invalid"),
    ("prefixquant_w4a4", dict(had_size=96), r"had_size = 96 is invalid; expected a power of two"),
    ("prefixquant_w4a4", dict(online_hadamard=1), r"online_hadamard = 1 is invalid"),
    ("w8a8_static", dict(weight="int4"), r"weight = 'int4' is invalid; expected one of \['int8', 'fp8_e4m3'\]"),
    ("watersic", dict(bits=1), r"bits = 1 is invalid; expected one of \[2, 3, 4, 5, 6, 7, 8\]"),
    ("watersic", dict(bits=16), r"bits = 16 is invalid"),
    ("watersic", dict(rate=4), r"unknown options \['rate'\]"),
])
def test_invalid_options(name, opts, match):
    with pytest.raises(SpecError, match=match):
        ir.get_format(name, **opts)


@pytest.mark.parametrize("name, opts, k, match", [
    ("matryoshka", dict(group_size=128), 320, r"K = 320 .* not a multiple of 128 \(one fp16 scale"),
    ("prefixquant_w4a4", dict(), 36, r"not a multiple of 8 \(8 int4 codes per int32 word"),
    ("prefixquant_w4a4", dict(online_hadamard=True, had_size=128), 192, r"multiple of 128 .*Hadamard blocks of 128"),
])
def test_invalid_shapes(name, opts, k, match):
    spec = ir.get_format(name, **opts)
    with pytest.raises(SpecError, match=match):
        ir.quantize(spec, torch.zeros(8, k))


@pytest.mark.parametrize("name, opts", ALL, ids=IDS)
def test_invalid_weights_tensors_and_calibration(name, opts, gen):
    spec = ir.get_format(name, **opts)
    with pytest.raises(SpecError, match="dtype"):
        ir.quantize(spec, torch.zeros(8, 256, dtype=torch.int32))
    with pytest.raises(SpecError, match="expected 2-D"):
        ir.quantize(spec, torch.zeros(256))
    with pytest.raises(SpecError, match="unexpected calibration inputs"):
        ir.quantize(spec, torch.zeros(8, 256), hessian=torch.eye(256))
    qt = ir.quantize(spec, _weights(gen, 8, 256))
    name0 = spec.tensors[1].name
    bad = dict(qt.tensors, **{name0: qt.tensors[name0].to(torch.float64)})
    with pytest.raises(SpecError, match=f"tensor '{name0}' has shape .* dtype torch.float64"):
        QuantizedTensor(spec, (8, 256), bad)


@pytest.mark.parametrize("name, value, match", [
    ("prefixquant_w4a4", -1.0, r"act_absmax = -1.0 is invalid"),
    ("w8a8_static", float("nan"), r"act_absmax = nan is invalid"),
    ("w8a8_static", "big", r"act_absmax = 'big' is invalid"),
])
def test_invalid_act_absmax(name, value, match):
    with pytest.raises(SpecError, match=match):
        ir.quantize(ir.get_format(name), torch.zeros(8, 256), act_absmax=value)


# -- matryoshka ------------------------------------------------------------------------------------------
def _matgptq_dequant(q, scale_ng, zero_ng, master_bitwidth, slice_bitwidth):
    """Transcription of IST-DASLab/MatGPTQ src/quant_utils_matgpqt.py (matryoshka_slice, dequantize,
    FakeMatryoshkaLinear.get_weight): q uint8 [N, K], scale fp16 [N, G], zero fp16 [N, G]."""
    drop = 8 - slice_bitwidth
    floor = q >> drop
    if master_bitwidth == slice_bitwidth:
        q_slices = torch.clamp(floor, 0, 2 ** slice_bitwidth - 1)
    else:
        round_bit = (q >> (drop - 1)) & 1
        q_slices = torch.clamp(floor + round_bit, 0, 2 ** slice_bitwidth - 1)
    q_shifted = q_slices << (master_bitwidth - slice_bitwidth)
    n = q.shape[0]
    scale, zero = scale_ng.view(n, -1, 1), zero_ng.view(n, -1, 1)
    return (scale * (q_shifted.view(n, scale.shape[1], -1) - zero)).view_as(q)


def _expand(t, g):
    """[K/g, N] -> [N, K] float64."""
    return t.double().t().repeat_interleave(g, dim=1)


@pytest.mark.parametrize("sym", (False, True))
@pytest.mark.parametrize("r", (2, 3, 4, 6, 8))
def test_matryoshka_round_trip_bound(r, sym, gen):
    g = 64
    W = _weights(gen)
    spec, qt, Wq = _encode("matryoshka", W, r=r, group_size=g, sym=sym)
    parent, _, _ = quantize_parent(W, g, sym)
    s = _expand(qt.tensors["scales"], g)
    err = (W.double() - Wq.double()).abs()
    # fp16 product s * ((q_r << d) - z) is one correctly rounded op: relative error <= 2**-11 of the exact value.
    fp16_slack = 2 ** -10 * Wq.double().abs()
    # Parent: s is rounded up and the range includes 0, so |w/s + z| lies in [-1/2, 255 + 1/2] and RTN misses
    # by <= 1/2 code. Slice, d = 8 - r: |(q_r << d) - q| <= 2**(d-1) (round half up), except at the top where
    # q_r = 2**r clamps to 2**r - 1: then (q_r << d) = 256 - 2**d and q - (256 - 2**d) <= 2**d - 1.
    d = 8 - r
    worst = 0.5 if r == 8 else 2 ** d - 0.5
    assert (err <= worst * s + fp16_slack).all()
    if r < 8:
        unclamped = parent.to(torch.int64) < 256 - 2 ** (d - 1)
        assert (err[unclamped] <= ((2 ** (d - 1) + 0.5) * s + fp16_slack)[unclamped]).all()


@pytest.mark.parametrize("sym", (False, True))
def test_matryoshka_one_parent_serves_all_widths(sym, gen):
    W = _weights(gen)
    codes, scales, zeros = quantize_parent(W, 128, sym)
    decoded = {}
    for r in (8, 6, 4, 3, 2):
        spec = ir.get_format("matryoshka", r=r, sym=sym)
        served = serve_from_parent(spec, codes, scales, zeros)
        direct = ir.quantize(spec, W).tensors
        assert all(torch.equal(served[k], direct[k]) for k in direct)
        # the stored r-bit codes are the slice of the parent
        fpw = 32 // r
        words = served["qweight"].to(torch.int64) & 0xFFFFFFFF
        stored = torch.stack([(words >> (r * j)) & (2 ** r - 1) for j in range(fpw)], 1).reshape(-1, N)[:K].t()
        assert torch.equal(stored, slice_parent(codes, r).to(torch.int64))
        decoded[r] = ir.dequantize(QuantizedTensor(spec, (N, K), served))
    # r = 8 decode == the int8 parent decode (MatGPTQ with master == slice == 8), bit for bit
    parent_w = _matgptq_dequant(codes, scales.t().contiguous(), zeros.t().to(torch.float16).contiguous(), 8, 8)
    assert torch.equal(decoded[8], parent_w.float())


@pytest.mark.parametrize("r", (2, 3, 4, 6, 8))
def test_matryoshka_bit_exact_vs_matgptq(r, gen):
    W = _weights(gen) + 0.01                       # shifted: asymmetric groups, zeros away from 128
    spec, qt, Wq = _encode("matryoshka", W, r=r, group_size=32)
    codes, scales, zeros = quantize_parent(W, 32, False)
    ref = _matgptq_dequant(codes, scales.t().contiguous(), zeros.t().to(torch.float16).contiguous(), 8, r)
    assert ref.dtype == torch.float16 and torch.equal(Wq, ref.float())
    # byte layout: independent unpack of 32 // r non-straddling LSB-first fields per int32 word along K
    words = qt.tensors["qweight"].to(torch.int64) & 0xFFFFFFFF
    fpw = 32 // r
    assert words.shape == (-(-K // fpw), N)
    for k in (0, 1, fpw - 1, fpw, K - 1):
        field = (words[k // fpw] >> (r * (k % fpw))) & (2 ** r - 1)
        assert torch.equal(field, slice_parent(codes[:, k], r).to(torch.int64))
    assert (words >> (r * fpw) == 0).all()         # r = 3, 6: the 2 spare high bits stay zero


def test_matryoshka_reencode_reproduces_codes(gen):
    W = _weights(gen)
    for r in (2, 4, 8):
        spec, qt, Wq = _encode("matryoshka", W, r=r)
        again = parent_codes(Wq, qt.tensors["scales"], qt.tensors["zeros"], 128)     # = q_r << (8 - r)
        assert torch.equal(again.to(torch.int64) >> (8 - r) << (8 - r), again.to(torch.int64))
        assert torch.equal(serve_from_parent(spec, again, qt.tensors["scales"], qt.tensors["zeros"])["qweight"],
                           qt.tensors["qweight"])


def test_matryoshka_ir_fields():
    spec = ir.get_format("matryoshka", r=3, group_size=64)
    assert spec.decode.kind == "msb_slice" and spec.decode.bits == 3
    assert spec.decode.param("parent_bits") == 8 and spec.decode.param("shift") == 5
    assert spec.decode.param("round_half_up") is True and spec.decode.param("clamp") is True
    assert spec.packing.fields_per_word == 10 and not spec.packing.straddle
    assert spec.tensor_schema(16, 128)["qweight"] == ((13, 16), "int32")
    assert spec.bits_per_weight(4096, 4096) == pytest.approx(410 * 32 / 4096 + (16 + 8) / 64)   # ceil(4096/10) words


def test_serve_from_parent_rejects_bad_inputs(gen):
    codes, scales, zeros = quantize_parent(_weights(gen), 128, False)
    spec = ir.get_format("matryoshka", r=4)
    with pytest.raises(SpecError, match="parent codes must be a uint8 tensor"):
        serve_from_parent(spec, codes.to(torch.int32), scales, zeros)
    with pytest.raises(SpecError, match=r"parent scales is .*expected shape \(4, 64\) dtype torch.float16"):
        serve_from_parent(spec, codes, scales.float(), zeros)
    with pytest.raises(SpecError, match="not a matryoshka format"):
        serve_from_parent(ir.get_format("watersic"), codes, scales, zeros)


# -- prefixquant_w4a4 ----------------------------------------------------------------------------------
def _prefixquant_weight_fake_quant(w, scale):
    """Transcription of ChenMnZ/PrefixQuant quantize/quantizer.py UniformAffineQuantizer.static_fake_quant
    (quant_type='weight', asym=False, disable_zero_point_in_sym: qmin=-8, qmax=7, group = in_features)."""
    scale = scale.clamp(1e-4, 1e4)
    x_int = torch.round(w.reshape(-1, w.shape[1]) / scale).clamp(-8, 7)
    return x_int.mul(scale).reshape(w.shape)


def _prefixquant_quant_activation(x, scale, bits):
    """Transcription of PrefixQuant quantize/quantizer.py quant_activation."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.round(x / scale).clamp(qmin, qmax).mul(scale)


@pytest.mark.parametrize("online", (False, True))
def test_prefixquant_round_trip_bound(online, gen):
    W = _weights(gen)
    spec, qt, Wq = _encode("prefixquant_w4a4", W, online_hadamard=online, had_size=128)
    Wk = block_hadamard(W, 128) if online else W
    s = qt.tensors["weight_scale"].double()[:, None]
    err = (Wk.double() - Wq.double()).abs()
    # Decode s * q is exact in fp32. Elements inside the clip range (|w| <= 7.5 s, or the negative end -8.5 s)
    # miss by <= s/2.
    inside = (Wk.double() / s).abs() <= 7.5
    assert (err[inside] <= 0.5 * s.expand_as(err)[inside] * (1 + 1e-6)).all()
    # Rigorous: the clip grid includes factor 1 (the min-max scale s1, which clips nothing), so each row's
    # squared error <= that of s1, itself <= K (s1 / 2)**2.
    s1 = (2 * Wk.abs().amax(1).double() / 15).clamp(1e-4, 1e4) * (1 + 2 ** -10)     # s1 rounded up to fp16
    assert ((err ** 2).sum(1) <= K * (s1 / 2) ** 2).all()
    # Statistical: the rows are Gaussian (a Hadamard keeps them so) and the grid reaches near the MSE-optimal
    # clip, so the error is within 10% of the ideal 16-level uniform quantizer.
    rel = ((Wk - Wq).norm() / Wk.norm()).item()
    assert rel <= 1.10 * ideal_uniform_rel_rms(4)


def test_prefixquant_bit_exact_vs_origin_and_quarot_bytes(gen):
    W = _weights(gen)
    spec, qt, Wq = _encode("prefixquant_w4a4", W)
    scale = qt.tensors["weight_scale"].float()[:, None]
    assert torch.equal(Wq, _prefixquant_weight_fake_quant(W, scale))
    q = weight_codes(W, qt.tensors["weight_scale"])
    # QuaRot pack_i4 (two's complement nibbles; [a, b] -> 0x{b}{a}) viewed as uint8 [N, K/2]
    quarot = ((q[:, 0::2] & 0xF) | ((q[:, 1::2] & 0xF) << 4)).to(torch.uint8)
    assert torch.equal(qt.tensors["qweight"].view(torch.uint8), quarot)
    assert torch.equal(weight_codes(Wq, qt.tensors["weight_scale"]), q)      # re-encode with the stored scale


def test_prefixquant_activation_quant_matches_origin(gen):
    x = torch.randn(2, 5, K, generator=gen) * 3
    spec = ir.get_format("prefixquant_w4a4")
    qt = ir.quantize(spec, _weights(gen), act_absmax=float(x.abs().amax()))
    s = qt.tensors["act_scale"]
    assert s.item() == pytest.approx(2 * x.abs().amax().item() / 15, rel=1e-6)
    assert act_scale_from_absmax(0.0) == 1e-4 and act_scale_from_absmax(1e9) == 1e4
    codes = pq_quantize_activation(x, s)
    assert codes.dtype == torch.int8 and int(codes.min()) >= -8 and int(codes.max()) <= 7
    assert torch.equal(codes.float() * s, _prefixquant_quant_activation(x, s, 4))
    assert ir.quantize(spec, _weights(gen)).tensors["act_scale"].item() == 1.0    # documented default


def test_prefixquant_online_hadamard_end_to_end(gen):
    W = _weights(gen)
    x = torch.randn(16, K, generator=gen)
    spec = ir.get_format("prefixquant_w4a4", online_hadamard=True, had_size=128)
    assert spec.transforms[0].kind == "hadamard" and spec.transforms[0].size == 128 and spec.k_multiple == 128
    xt = block_hadamard(x, 128)
    qt = ir.quantize(spec, W, act_absmax=float(xt.abs().amax()))
    Wq = ir.dequantize(qt)
    s_x = qt.tensors["act_scale"]
    y = (pq_quantize_activation(xt, s_x).float() * s_x) @ Wq.t()
    y_ref = x @ W.t()
    # W4A4 with min-max act scale: relative output error ~ sqrt(w_err^2 + x_err^2) ~ 0.1 + 0.15; loose 0.35.
    assert ((y - y_ref).norm() / y_ref.norm()).item() < 0.35
    # with exact activations the only error is the weight's, which the rotation does not change
    y_w = xt @ Wq.t()
    assert ((y_w - y_ref).norm() / y_ref.norm()).item() < 1.3 * ideal_uniform_rel_rms(4)


# -- w8a8_static ---------------------------------------------------------------------------------------
def _ct_fake_quant(x, scale, kind):
    """Transcription of compressed-tensors lifecycle/forward.py _quantize + _dequantize, symmetric
    (zero point 0): clamp(x / s, qmin, qmax), round (int) or cast (fp8), then x_q.to(scale.dtype) * s."""
    if kind == "int8":
        q = torch.round(torch.clamp(x / scale, -128, 127)).to(torch.int8)
    else:
        q = torch.clamp(x / scale, -448, 448).to(torch.float8_e4m3fn)
    return q, q.to(scale.dtype) * scale


@pytest.mark.parametrize("kind", ("int8", "fp8_e4m3"))
def test_w8a8_round_trip_bound_and_origin(kind, gen):
    W = _weights(gen)
    spec, qt, Wq = _encode("w8a8_static", W, weight=kind)
    s = qt.tensors["weight_scale"]
    assert torch.equal(s, W.abs().amax(1) / (127.5 if kind == "int8" else 448.0))
    codes, ref = _ct_fake_quant(W, s[:, None], kind)
    assert torch.equal(qt.tensors["weight"].view(torch.uint8), codes.view(torch.uint8)) and torch.equal(Wq, ref)
    err = (W.double() - Wq.double()).abs()
    sd = s.double()[:, None]
    prod_slack = 2 ** -23 * Wq.double().abs()       # the fp32 product code * s
    if kind == "int8":
        # |w / s| <= 127.5 (up to fp32 rounding of s), so RTN + clamp to [-128, 127] misses by <= s/2.
        assert (err <= 0.5 * sd * (1 + 1e-5) + prod_slack).all()
    else:
        # e4m3: 3 mantissa bits, so normals (|v| >= 2**-6) round within 2**-4 relative; subnormals are spaced
        # 2**-9, so within 2**-10 absolute (code units); |w / s| <= 448 needs no saturation.
        assert (err <= 2 ** -4 * W.double().abs() + 2 ** -10 * sd + prod_slack).all()
    # re-encoding the decoded weights with the stored scale gives the same codes
    again, _ = _ct_fake_quant(Wq, s[:, None], kind)
    assert torch.equal(again.view(torch.uint8), codes.view(torch.uint8))
    rel = ((W - Wq).norm() / W.norm()).item()
    assert rel < (0.01 if kind == "int8" else 0.03)


@pytest.mark.parametrize("kind", ("int8", "fp8_e4m3"))
def test_w8a8_activation_quant(kind, gen):
    x = torch.randn(4, K, generator=gen) * 2
    absmax = float(x.abs().amax())
    spec = ir.get_format("w8a8_static", weight=kind)
    qt = ir.quantize(spec, _weights(gen), act_absmax=absmax)
    s = qt.tensors["act_scale"]
    assert s.dtype == torch.float32 and s.item() == pytest.approx(absmax / (127.5 if kind == "int8" else 448.0))
    codes = w8_quantize_activation(x, s, kind)
    ref_codes, _ = _ct_fake_quant(x, s, kind)
    assert codes.dtype == ref_codes.dtype and torch.equal(codes.view(torch.uint8), ref_codes.view(torch.uint8))
    assert spec.act_quant.kind == ("int" if kind == "int8" else "fp8_e4m3") and spec.act_quant.tensor == "act_scale"
    with pytest.raises(SpecError, match="kind = 'int4' is invalid"):
        w8_quantize_activation(x, s, "int4")


# -- watersic ------------------------------------------------------------------------------------------
def _zsic_dequantize(Z, alpha_base, t_vec, g_vec):
    """Transcription of egorlifar/watersic quant_layerwise/methods/zsic.py dequantize_zsic(apply_tgamma=True)
    with sic_decode (no zero point, no dead dims)."""
    w_hat = Z.float() * alpha_base.float()
    return (t_vec.float().unsqueeze(1) * w_hat) * g_vec.float().unsqueeze(0)


def _unpack_signed(qweight, bits, k):
    """Independent unpack: field j of word w (row-major [N, words]) is bits [bits*j, bits*(j+1)), two's complement."""
    if bits == 8:
        return qweight.to(torch.int64)
    fpw = 32 // bits
    words = qweight.to(torch.int64) & 0xFFFFFFFF
    fields = torch.stack([(words >> (bits * j)) & (2 ** bits - 1) for j in range(fpw)], dim=2).reshape(len(words), -1)
    fields = fields[:, :k]
    return torch.where(fields >= 2 ** (bits - 1), fields - 2 ** bits, fields)


@pytest.mark.parametrize("bits", (2, 3, 4, 5, 8))
def test_watersic_round_trip_bound(bits, gen):
    W = _weights(gen)
    spec, qt, Wq = _encode("watersic", W, bits=bits)
    T, alpha = qt.tensors["row_scale"], qt.tensors["col_scale"]
    Z = _unpack_signed(qt.tensors["qweight"], bits, K)
    assert torch.equal(Wq, _zsic_dequantize(Z, alpha, T, torch.ones(K)))       # bit-exact vs the origin's decode
    step = T.double()[:, None] * alpha.double()[None, :]
    err = (W.double() - Wq.double()).abs()
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    # Elements inside the grid's range miss by <= step/2 (plus fp32 rounding of the two products).
    inside = (W.double() / step >= lo - 0.5) & (W.double() / step <= hi + 0.5)
    assert (err[inside] <= (0.5 * step * (1 + 1e-6) + 2 ** -22 * Wq.double().abs())[inside]).all()
    # Rigorous: factor 1 of the clip grid covers every element of the row, so the chosen T's row error
    # <= that one's <= K (step_max / 2)**2 with step_max = max_i |W / alpha| / (2**(bits-1) - 1/2) * alpha_i.
    peak = (W.double() / alpha.double()).abs().amax(1) / (2 ** (bits - 1) - 0.5)
    assert ((err ** 2).sum(1) <= ((peak[:, None] * alpha.double()[None, :] / 2) ** 2).sum(1) * (1 + 1e-5)).all()
    # Statistical: Gaussian rows, near-optimal clip from the grid; the two's complement grid (one extra
    # negative level, no symmetric midrise pair) and the finite grid cost a few percent: within 20%.
    rel = ((W - Wq).norm() / W.norm()).item()
    assert rel <= 1.20 * ideal_uniform_rel_rms(bits)
    assert torch.equal(watersic_codes(Wq, T, alpha, bits), Z)                   # re-encode, stored scales


def test_watersic_waterfilling_with_calibration(gen):
    bits = 4
    W = _weights(gen)
    act = torch.exp(torch.linspace(math.log(1e-4), math.log(1e2), K))       # E[x_i^2] over 6 decades
    act[:8] = 0.0                                                            # dead inputs
    spec = ir.get_format("watersic", bits=bits)
    qt = ir.quantize(spec, W, act_sq_mean=act)
    alpha, T = qt.tensors["col_scale"].double(), qt.tensors["row_scale"].double()
    Z = _unpack_signed(qt.tensors["qweight"], bits, K)
    Wq = ir.dequantize(qt)
    # the origin's c at R = bits over live columns (zsic.py compress_w2q), L_ii = sqrt(E[x_i^2])
    L = act.double().sqrt()
    live = L > 0
    sw = (W.double() ** 2).sum(0) / N
    c = torch.exp(torch.log(12 * sw[live] * L[live] ** 2).mean() / 2 - bits * math.log(2))
    fit = W.double().abs().amax(0) / (2 ** (bits - 1) - 0.5)
    wf = c / L
    assert torch.allclose(alpha[live], torch.maximum(wf, fit)[live], rtol=1e-6, atol=0)
    assert (wf[live] > fit[live]).any() and (wf[live] < fit[live]).any()    # both regimes occur
    assert (alpha[~live] == 0).all() and (Z[:, ~live] == 0).all() and (Wq[:, ~live] == 0).all()
    assert int(Z.min()) >= -8 and int(Z.max()) <= 7
    # the weighted error of the chosen T is no worse than the no-clip T (factor 1 is in the grid)
    wt = L.float() ** 2                                  # the encoder's weights: float32 L, squared
    peak = torch.where(live, W / torch.where(live, alpha, 1.0).float(), 0.0).abs().amax(1) / 7.5
    Z1 = watersic_codes(W, peak, alpha.float(), bits)
    err1 = ((W - sic_decode(Z1, peak, alpha.float())) ** 2 * wt).sum(1)
    assert (((W - Wq) ** 2 * wt).sum(1) <= err1 * (1 + 1e-6)).all()
    assert T.shape == (N,) and CLIP_FACTORS[0] == 1.0


def test_watersic_rejects_bad_calibration(gen):
    spec = ir.get_format("watersic")
    W = _weights(gen, 8, 256)
    for bad, match in ((torch.ones(255), r"shape \(255,\)"), (-torch.ones(256), "finite values >= 0"),
                       (torch.full((256,), float("inf")), "finite values >= 0"), ("x", "not convertible")):
        with pytest.raises(SpecError, match=match):
            ir.quantize(spec, W, act_sq_mean=bad)


def test_watersic_ir_fields():
    spec = ir.get_format("watersic", bits=3)
    assert spec.tensor_schema(4, 100)["qweight"] == ((4, 10), "int32")
    assert spec.transforms[0].kind == "col_scale" and spec.transforms[0].tensor == "col_scale"
    assert spec.scales[0].name == "row_scale" and spec.scales[0].granularity == "row"
    assert spec.decode.signed and spec.decode.bits == 3
    assert ir.get_format("watersic", bits=8).tensor("qweight").dtype == "int8"
    # the packed words leave the 2 spare high bits (3-bit, 10 per word) and the tail zero
    qt = ir.quantize(spec, torch.randn(4, 100) * 0.02)
    words = qt.tensors["qweight"].to(torch.int64) & 0xFFFFFFFF
    assert (words >> 30 == 0).all()
