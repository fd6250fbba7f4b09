"""GGUF Q4_0 / Q8_0 / Q4_K / Q2_K: byte layout, decoders and encoders against the origin.

Origins: gguf-py (gguf==0.19.0, llama.cpp's own Python package) for every decoder and for the
Q4_0 / Q8_0 encoders; ggml's quantize_row_q4_K_ref / quantize_row_q2_K_ref (llama.cpp @ 01243c5,
ggml/src/ggml-quants.c) for the K-quant encoders, through digests of the blocks that the C code
produced when compiled with gcc -O2 -ffp-contract=off on x86-64 (strict float32, no FMA).
"""
import hashlib

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

import ir
from ir.formats import gguf as G

FORMATS = {"gguf_q4_0": "Q4_0", "gguf_q8_0": "Q8_0", "gguf_q4_k": "Q4_K", "gguf_q2_k": "Q2_K"}
BPW = {"gguf_q4_0": 4.5, "gguf_q8_0": 8.5, "gguf_q4_k": 4.5, "gguf_q2_k": 2.625}


def _ggml(name):
    return GGMLQuantizationType[FORMATS[name]]


def _field(spec, name):
    """(offset, byte count) of a struct field, from the spec."""
    return G.block_fields(spec)[name]


def _random_blocks(spec, n_blocks, gen):
    """Random block bytes whose fp16 fields (d, dmin) are random *finite* fp16 values (any sign,
    subnormals included): an exponent of all ones (inf/nan) gets its top exponent bit cleared."""
    ts = spec.param("type_size")
    b = torch.randint(0, 256, (n_blocks, ts), generator=gen, dtype=torch.int64)
    for name in ("d", "dmin"):
        if name in G.block_fields(spec):
            off, _ = _field(spec, name)
            h = b[:, off] | (b[:, off + 1] << 8)
            h = torch.where((h & 0x7C00) == 0x7C00, h & ~0x4000, h)
            b[:, off], b[:, off + 1] = h & 0xFF, h >> 8
    return b.to(torch.uint8)


def _bits(t):
    return t.contiguous().view(torch.int32)


def _decode_blocks(spec, blocks):
    return ir.dequantize(ir.QuantizedTensor(spec, (blocks.shape[0], spec.param("block_size")), {"blocks": blocks}))


# --------------------------------------------------------------------------------------------- spec
@pytest.mark.parametrize("name", FORMATS)
def test_spec_describes_the_ggml_block(name):
    spec = ir.get_format(name)
    bs, ts = GGML_QUANT_SIZES[_ggml(name)]
    assert (spec.param("block_size"), spec.param("type_size"), spec.k_multiple) == (bs, ts, bs)
    assert spec.decode.param("ggml_type_id") == int(_ggml(name))
    assert spec.bits_per_weight(4096, 4096) == BPW[name]
    assert spec.tensor_schema(4, 2 * bs) == {"blocks": ((4, 2 * ts), "uint8")}
    assert spec.packing.layout == "gguf_block" and spec.decode.kind == "affine"
    # the struct fields tile the block exactly, in offset order
    f = sorted(G.block_fields(spec).values())
    assert f[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(f, f[1:])) and f[-1][0] + f[-1][1] == ts
    kquant = name.endswith("_k")
    assert [lvl.depth() for lvl in spec.scales] == ([2, 2] if kquant else [1])
    if kquant:
        sc, m = spec.scales
        assert (sc.size, sc.bits, sc.quantized_by.name, sc.quantized_by.size) == \
               ((32, 6, "d", 256) if name == "gguf_q4_k" else (16, 4, "d", 256))
        assert (m.op, m.quantized_by.name) == ("affine_min", "dmin")
    else:
        assert (spec.scales[0].dtype, spec.scales[0].size) == ("float16", 32)


@pytest.mark.parametrize("name", FORMATS)
def test_json_round_trip_and_key(name):
    spec = ir.get_format(name)
    back = ir.FormatSpec.from_json(spec.to_json())
    assert back == spec and back.key == spec.key
    assert ir.get_format(name).key == spec.key
    assert len({ir.get_format(n).key for n in FORMATS}) == len(FORMATS)


def test_rejections():
    with pytest.raises(ir.SpecError, match="unknown options"):
        ir.get_format("gguf_q4_0", bits=3)
    with pytest.raises(ir.SpecError, match="not a multiple of 256"):
        ir.quantize(ir.get_format("gguf_q4_k"), torch.zeros(4, 128))
    with pytest.raises(ir.SpecError, match="not a multiple of 32"):
        ir.quantize(ir.get_format("gguf_q8_0"), torch.zeros(4, 48))
    with pytest.raises(ir.SpecError, match="dtype"):
        ir.quantize(ir.get_format("gguf_q4_0"), torch.zeros(4, 32, dtype=torch.int32))
    with pytest.raises(ir.SpecError, match="calibration"):
        ir.quantize(ir.get_format("gguf_q2_k"), torch.zeros(4, 256), act_absmax=torch.ones(256))
    spec = ir.get_format("gguf_q4_0")
    with pytest.raises(ir.SpecError, match="expected shape"):
        ir.QuantizedTensor(spec, (4, 64), {"blocks": torch.zeros(4, 18, dtype=torch.uint8)})
    with pytest.raises(ir.SpecError, match="dtype torch.uint8"):
        ir.QuantizedTensor(spec, (4, 64), {"blocks": torch.zeros(4, 36, dtype=torch.int8)})


# --------------------------------------------------------------------------------------------- decode
@pytest.mark.parametrize("name", FORMATS)
def test_decode_bit_exact_against_gguf_py(name, gen):
    spec = ir.get_format(name)
    bs, ts = spec.param("block_size"), spec.param("type_size")
    blocks = _random_blocks(spec, 96, gen).reshape(8, 12 * ts)  # 8 rows of 12 blocks along K
    ours = ir.dequantize(ir.QuantizedTensor(spec, (8, 12 * bs), {"blocks": blocks}))
    ref = torch.from_numpy(gguf_dequantize(blocks.numpy(), _ggml(name)))
    assert ref.shape == (8, 12 * bs) and torch.equal(_bits(ours), _bits(ref))


def test_q4_0_nibble_order_by_hand():
    """Low nibbles hold elements 0..15, high nibbles 16..31: y[j] = d*(lo-8), y[j+16] = d*(hi-8)."""
    spec = ir.get_format("gguf_q4_0")
    j = torch.arange(16)
    block = torch.cat([torch.tensor([0x00, 0x40]), j | ((15 - j) << 4)]).to(torch.uint8)[None]  # d = 2.0
    y = _decode_blocks(spec, block)[0]
    assert torch.equal(y, 2.0 * (torch.cat([j, 15 - j]) - 8).float())


def test_q2_k_bit_planes_by_hand():
    """Q2_K: weights l, l+32, l+64, l+96 (of each 128) share byte qs[l] at shifts 0, 2, 4, 6."""
    spec = ir.get_format("gguf_q2_k")
    qs = torch.zeros(64, dtype=torch.int64)
    qs[5] = 1 | (2 << 2) | (3 << 4)          # element 5 -> 1, 37 -> 2, 69 -> 3, 101 -> 0
    qs[32 + 7] = 3 << 6                       # element 128 + 96 + 7 -> 3
    scales = torch.full((16,), 0x01)          # sc = 1, m = 0
    d = torch.tensor([0x00, 0x3C, 0x00, 0x00])  # d = 1.0, dmin = 0
    y = _decode_blocks(spec, torch.cat([scales, qs, d]).to(torch.uint8)[None])[0]
    expect = torch.zeros(256)
    expect[[5, 37, 69, 231]] = torch.tensor([1.0, 2.0, 3.0, 3.0])
    assert torch.equal(y, expect)


def test_q4_k_scale_map_matches_get_scale_min_k4(gen):
    """The IR's sc_map / m_map against a direct transcription of ggml's get_scale_min_k4."""
    spec = ir.get_format("gguf_q4_k")
    raw = torch.randint(0, 256, (64, 12), generator=gen, dtype=torch.int64)
    sc = G.unpack_bit_pieces(raw, spec.decode.param("sc_map"))
    m = G.unpack_bit_pieces(raw, spec.decode.param("m_map"))
    for j in range(8):
        if j < 4:
            want_sc, want_m = raw[:, j] & 63, raw[:, j + 4] & 63
        else:
            want_sc = (raw[:, j + 4] & 0xF) | ((raw[:, j - 4] >> 6) << 4)
            want_m = (raw[:, j + 4] >> 4) | ((raw[:, j] >> 6) << 4)
        assert torch.equal(sc[:, j], want_sc) and torch.equal(m[:, j], want_m)


@pytest.mark.parametrize("name", FORMATS)
def test_encode_decode_deterministic(name, gen):
    spec = ir.get_format(name)
    W = torch.randn(8, 512, generator=gen)
    a, b = ir.quantize(spec, W), ir.quantize(spec, W.clone())
    assert torch.equal(a.tensors["blocks"], b.tensors["blocks"])
    assert torch.equal(_bits(ir.dequantize(a)), _bits(ir.dequantize(b)))



# --------------------------------------------------------------------------------------------- encode
def _special_blocks(bs):
    """[9, bs] blocks on the encoders' edge rules: all zeros, -0.0, constants, |max| ties of both signs
    (Q4_0 keeps the first), a single non-zero, values on rounding half-points, a ramp."""
    z = torch.zeros(bs)
    tie = z.clone()
    tie[3], tie[9] = -1.5, 1.5
    one = z.clone()
    one[bs // 2] = 0.7
    half = (torch.arange(bs) % 17 - 8) * 0.5
    return torch.stack([z, -z, z + 0.37, z - 0.37, tie, -tie, one, half, torch.linspace(-3, 1, bs)])


@pytest.mark.parametrize("name", ["gguf_q4_0", "gguf_q8_0"])
def test_encode_byte_identical_to_gguf_py(name, gen):
    spec = ir.get_format(name)
    for W in (torch.randn(8, 256, generator=gen) * 0.02, torch.randn(8, 256, generator=gen) ** 3,
              _special_blocks(32)):
        ours = ir.quantize(spec, W).tensors["blocks"].numpy()
        ref = gguf_quantize(W.numpy(), _ggml(name))
        if name == "gguf_q4_0" and W.shape[1] == 32:
            # Block 1 is all -0.0. ggml's C scan never replaces its initial max = +0.0, so d = +0.0/-8
            # = -0.0 (bytes 00 80); gguf-py takes max = x[0] = -0.0 and writes +0.0. We follow the C code.
            assert ours[1, :2].tolist() == [0x00, 0x80] and ref[1, :2].tolist() == [0, 0]
            ours, ref = np.delete(ours, 1, axis=0), np.delete(ref, 1, axis=0)
        assert np.array_equal(ours, ref)


DIGEST_KINDS = ("gauss", "heavy", "uniform", "sparse", "special")


def _det_weights(kind):
    """[8, 512] float32 weights from integer hashing and float64 arithmetic only (no RNG library), so the
    same values exist anywhere the digests below are checked."""
    if kind == "special":
        sb = _special_blocks(256)
        return torch.cat([sb, sb.flip(1) * 3])[:16].reshape(8, 512)
    i = np.arange(8 * 512 * 13, dtype=np.uint64)
    z = i + np.uint64(0x9E3779B97F4A7C15)                      # splitmix64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    u = ((z ^ (z >> np.uint64(31))) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    u = u.reshape(13, -1)
    g = u[:12].sum(axis=0) - 6.0                              # Irwin-Hall ~ N(0, 1)
    x = {"gauss": g, "heavy": g ** 3, "uniform": 2 * u[12] - 1, "sparse": np.where(u[12] < 0.2, g, 0.0)}[kind]
    return torch.from_numpy(x.astype(np.float32).reshape(8, 512))


# sha256 (first 32 hex digits) of the blocks that ggml's quantize_row_{q4_K,q2_K}_ref wrote for
# _det_weights(kind), compiled as described in the module docstring. A build that contracts a*b+c
# into FMA (aarch64 gcc, -march=native) writes different, equally valid blocks.
GGML_DIGESTS = {
    ("gguf_q4_k", "gauss"): "d3a55649170440b9d0a38a8e622936b1",
    ("gguf_q4_k", "heavy"): "f8e780fb19adf146e30eb449680e09b0",
    ("gguf_q4_k", "uniform"): "ff28fa6991ab7919632535efc6249159",
    ("gguf_q4_k", "sparse"): "311ebb3df35b4270e1e47fe54a3045a7",
    ("gguf_q4_k", "special"): "ff1ec2371a9e7dc836655a222b6a382a",
    ("gguf_q2_k", "gauss"): "0e8b94d47188061e4d2608a5b3312fa5",
    ("gguf_q2_k", "heavy"): "b955a93c9ff732ce4d04953a012c7a57",
    ("gguf_q2_k", "uniform"): "51b0213fa174ee5e4a3e16afb330a2bf",
    ("gguf_q2_k", "sparse"): "e05499369ae68da2930f79362e5c918e",
    ("gguf_q2_k", "special"): "f78e2ddbf056f31620aa7411accd991f",
}


@pytest.mark.parametrize("name,kind", sorted(GGML_DIGESTS))
def test_k_quant_encoder_matches_ggml_reference(name, kind):
    blocks = ir.quantize(ir.get_format(name), _det_weights(kind)).tensors["blocks"]
    assert hashlib.sha256(blocks.numpy().tobytes()).hexdigest()[:32] == GGML_DIGESTS[(name, kind)]


# --------------------------------------------------------------------------------------------- round trip
def _block_view(spec, W, Wq):
    bs = spec.param("block_size")
    return W.reshape(-1, bs), Wq.reshape(-1, bs)


def test_q8_0_round_trip_bound(gen):
    # s = amax/127 (fp32), d = fp16(s) with |d - s| <= 2**-11 s; q = roundf(x/s) gives |x - q s| <= s/2,
    # and |q| <= 127, so |x - q d| <= s (1/2 + 127 * 2**-11). 1e-5 relative slack covers float32 rounding.
    spec = ir.get_format("gguf_q8_0")
    W = torch.randn(64, 256, generator=gen)
    x, y = _block_view(spec, W, ir.dequantize(ir.quantize(spec, W)))
    s = x.abs().amax(dim=1, keepdim=True) / 127
    assert ((x - y).abs() <= s * (0.5 + 127 / 2048) * (1 + 1e-5)).all()


def test_q4_0_round_trip_bound(gen):
    # d = max/-8 (max: the signed value of largest |x|); codes q-8 in [-8, 7] cover d*[-8, 7], i.e. from
    # `max` to -7/8 max. trunc(x/d + 8.5) rounds to nearest, so |err| <= |d|/2 where x/d <= 7.5 and
    # <= |d| where it clamps at 7 (x within |d| of -max); fp16 rounding of d adds <= 8 * 2**-11 |d|.
    spec = ir.get_format("gguf_q4_0")
    W = torch.randn(64, 256, generator=gen)
    x, y = _block_view(spec, W, ir.dequantize(ir.quantize(spec, W)))
    ax = x.abs()
    mx = x.gather(1, ax.argmax(dim=1, keepdim=True))
    d = mx / -8
    err, slack = (x - y).abs(), 8 / 2048 * d.abs() + 1e-5 * ax
    interior = x / d <= 7.5
    assert (err[interior] <= (d.abs() / 2 + slack).expand_as(x)[interior]).all()
    assert (err <= d.abs() + slack).all()
    assert (y.gather(1, ax.argmax(dim=1, keepdim=True)) == mx.half().float()).all()  # max is exact up to fp16


@pytest.mark.parametrize("name", ["gguf_q4_k", "gguf_q2_k"])
def test_k_quant_round_trip_is_nearest_grid_point(name, gen):
    # After the search fixes (d, dmin, sc, m), the final pass rounds every weight to the nearest point of
    # its sub-block grid {d*sc*q - dmin*m : q = 0..nmax}: |err| <= d*sc/2 inside the grid's span, and the
    # nearest end point outside it. Sub-blocks with d*sc == 0 decode to -dmin*m whatever the codes.
    spec = ir.get_format(name)
    sub, nmax = spec.decode.param("sub_block"), 2 ** spec.decode.bits - 1
    W = torch.randn(32, 512, generator=gen)
    qt = ir.quantize(spec, W)
    y = ir.dequantize(qt).reshape(-1, sub)
    x = W.reshape(-1, sub)
    d_sub, m_sub = _sub_scales(spec, qt.tensors["blocks"])
    grid = d_sub[:, None] * torch.arange(nmax + 1, dtype=torch.float32)[None] - m_sub[:, None]  # [S, nmax+1]
    nearest = (x[:, :, None] - grid[:, None, :]).abs().amin(dim=2)
    tol = 1e-6 * (x.abs() + m_sub[:, None] + nmax * d_sub[:, None])
    assert ((x - y).abs() <= nearest + tol).all()


def _sub_scales(spec, blocks):
    """Effective per-sub-block scale d*sc and min dmin*m (float32, as the decoder computes them)."""
    b = blocks.reshape(-1, spec.param("type_size"))
    f = G.block_fields(spec)

    def fld(n):
        return b[:, f[n][0]:f[n][0] + f[n][1]]
    d, dmin = G.read_f16(fld("d")), G.read_f16(fld("dmin"))
    sc = G.unpack_bit_pieces(fld("scales"), spec.decode.param("sc_map")).float()
    m = G.unpack_bit_pieces(fld("scales"), spec.decode.param("m_map")).float()
    return (d[:, None] * sc).reshape(-1), (dmin[:, None] * m).reshape(-1)


# Measured ||W - Wq||_F / ||W||_F on Gaussian 256x1024: q8_0 0.0053, q4_0 0.086, q4_k 0.071,
# q2_k 0.297. These caps guard against regressions (~10% above the measurement).
REL_ERR_CAP = {"gguf_q8_0": 0.006, "gguf_q4_0": 0.095, "gguf_q4_k": 0.079, "gguf_q2_k": 0.33}


@pytest.mark.parametrize("name", FORMATS)
def test_relative_error_on_gaussian(name, gen):
    spec = ir.get_format(name)
    W = torch.randn(64, 1024, generator=gen)
    Wq = ir.dequantize(ir.quantize(spec, W))
    assert ((W - Wq).norm() / W.norm()).item() < REL_ERR_CAP[name]


@pytest.mark.parametrize("name", ["gguf_q4_0", "gguf_q8_0"])
def test_reencode_decoded_weights_reproduces_blocks(name, gen):
    # Q8_0: 127*d and d*q/d are exact, so the decoded block re-encodes to itself; Q4_0 likewise (-8*d is
    # the unique largest |value| and x/d + 8.5 lands within float rounding of q + 0.5).
    spec = ir.get_format(name)
    W = torch.cat([torch.randn(16, 256, generator=gen), torch.zeros(1, 256)])
    qt = ir.quantize(spec, W)
    assert torch.equal(ir.quantize(spec, ir.dequantize(qt)).tensors["blocks"], qt.tensors["blocks"])


@pytest.mark.parametrize("name", ["gguf_q4_k", "gguf_q2_k"])
def test_k_quant_final_pass_reproduces_codes(name, gen):
    # A full K-quant re-encode re-runs the scale search, which need not land on the same (sc, m): the
    # format allows only the last step to be idempotent. With the stored scales held fixed, the final
    # pass maps the decoded weights back to exactly the stored codes (sub-blocks with d*sc != 0).
    spec = ir.get_format(name)
    sub, nmax = spec.decode.param("sub_block"), 2 ** spec.decode.bits - 1
    qt = ir.quantize(spec, torch.randn(16, 512, generator=gen))
    d_sub, m_sub = _sub_scales(spec, qt.tensors["blocks"])
    y = ir.dequantize(qt).reshape(-1, sub)
    b = qt.tensors["blocks"].reshape(-1, spec.param("type_size"))
    off, n = G.block_fields(spec)["qs"]
    codes = G.unpack_codes(b[:, off:off + n], spec.decode.bits, spec.decode.param("qs_plane")).reshape(-1, sub)
    again = G.k_requantize(y, d_sub[:, None], m_sub[:, None], nmax)
    live = d_sub != 0
    assert live.float().mean() > 0.9
    assert torch.equal(again[live], codes[live])
