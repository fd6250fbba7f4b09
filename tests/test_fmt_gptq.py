"""GPTQ / AutoRound / AWQ / EfficientQAT group-affine int formats (ir/formats/gptq.py).

The byte-layout tests compare against hand-written transcriptions of the origins' own pack and unpack
code (GPTQModel, AutoAWQ, EfficientQAT are not installed here): those functions below are written
from the origin sources, independently of ir/bitpack.py and ir/formats/gptq_pack.py.
"""
import numpy as np
import pytest
import torch

import ir
from ir import FormatSpec, QuantizedTensor, SpecError, dequantize, get_format, quantize
from ir.formats.gptq_pack import (awq_pack_cols, awq_unpack_cols, eqat_pack_codes, eqat_unpack_codes,
                                  eqat_unpack_zeros, gptq_pack_codes, gptq_pack_zeros, gptq_unpack_codes,
                                  gptq_unpack_zeros, group_index)

N, K = 64, 256

ROUND_TRIP = [
    ("gptq", dict(bits=2)), ("gptq", dict(bits=3)), ("gptq", dict(bits=4)), ("gptq", dict(bits=8)),
    ("gptq", dict(bits=4, sym=True)), ("gptq", dict(bits=3, sym=True, checkpoint="v2")),
    ("gptq", dict(bits=2, group_size=-1, checkpoint="v2")), ("gptq", dict(bits=4, group_size=32, desc_act=True)),
    ("autoround", dict()), ("autoround", dict(bits=2, sym=False)),
    ("awq", dict()), ("awq", dict(group_size=64)),
    ("eqat", dict(bits=2)), ("eqat", dict(bits=3)), ("eqat", dict(bits=4, group_size=-1)), ("eqat", dict(bits=8)),
    ("int4_g128_asym", {}), ("int4_g128_sym", {}), ("int3_g128_asym", {}), ("int2_g64_asym", {}),
    ("int2_g128_asym", {}), ("eqat_w2g64", {}), ("eqat_w2g128", {}), ("eqat_w3g128", {}), ("eqat_w4g128", {}),
    ("int4_g32_sym_f32", {}), ("gptq", dict(group_size=64, compute_dtype="float32")),
]
ASYM = [(n, o) for n, o in ROUND_TRIP if not get_format(n, **o).param("sym") and not o.get("desc_act")]


def _ids(cases):
    return [n + "".join(f"-{k}{v}" for k, v in o.items()) for n, o in cases]


def element_scales(spec, tensors, K):
    """The stored fp16 scale of every weight, [N, K] as float64."""
    g = K if spec.param("group_size") == -1 else spec.param("group_size")
    g_idx = tensors["g_idx"].long() if "g_idx" in tensors and spec.family == "gptq" else torch.arange(K) // g
    return tensors["scales"].double()[g_idx].t()


def rtn_bound(spec, tensors, Wq):
    """The elementwise RTN error bound derived in test_round_trip_error_bound."""
    maxq = 2 ** spec.param("bits") - 1
    s = element_scales(spec, tensors, Wq.shape[1])
    return s * (0.5 + maxq * 2.0 ** -10) + Wq.double().abs() * 2.0 ** -11


# -- registry, options, spec -------------------------------------------------------------------
def test_all_formats_registered():
    names = {"gptq", "autoround", "awq", "eqat", "int4_g128_asym", "int4_g128_sym", "int3_g128_asym",
             "int4_g32_sym_f32", "int2_g64_asym", "int2_g128_asym", "eqat_w2g64", "eqat_w2g128", "eqat_w3g128", "eqat_w4g128"}
    assert names <= set(ir.list_formats())
    for n in names:
        assert ir.format_summary(n)
        assert get_format(n).name == n


@pytest.mark.parametrize("name,opts", ROUND_TRIP, ids=_ids(ROUND_TRIP))
def test_json_round_trip_and_key(name, opts):
    spec = get_format(name, **opts)
    back = FormatSpec.from_json(spec.to_json())
    assert back == spec and back.key == spec.key
    assert get_format(name, **opts).key == spec.key


def test_keys_differ_by_option():
    keys = {get_format("gptq", **o).key for o in (
        {}, dict(bits=3), dict(group_size=64), dict(sym=True), dict(desc_act=True), dict(checkpoint="v2"))}
    assert len(keys) == 6
    assert get_format("eqat", bits=2).key != get_format("eqat", bits=3).key
    assert get_format("awq").key != get_format("awq", group_size=64).key
    # a preset is the general builder under its own name
    preset, general = get_format("int4_g128_asym"), get_format("gptq", checkpoint="v2")
    assert preset.params == general.params and preset.tensors == general.tensors and preset.key != general.key
    assert get_format("eqat_w2g64").params == get_format("eqat", bits=2, group_size=64).params


def test_spec_describes_layout():
    s3 = get_format("gptq", bits=3, desc_act=True)
    assert s3.packing.straddle and s3.packing.field_bits == 3 and s3.packing.axis == "K"
    assert s3.k_multiple == 128 and s3.n_multiple == 32
    # g_idx gathers scales and zeros per input column; x is not permuted (no transform)
    assert s3.transforms == () and s3.tensor("g_idx").role == "meta" and not s3.tensor("g_idx").optional
    assert not s3.tensor("g_idx").optional and get_format("gptq").tensor("g_idx").optional
    assert get_format("gptq").decode.param("zero_offset") == 1
    assert get_format("gptq", checkpoint="v2").decode.param("zero_offset") == 0
    assert get_format("autoround").param("checkpoint") == "v1" and get_format("autoround").param("sym")
    assert get_format("gptq", bits=4, group_size=-1).scales[0].granularity == "row"
    assert get_format("gptq", bits=4, group_size=16).k_multiple == 16
    awq = get_format("awq")
    assert awq.packing.axis == "N" and awq.decode.param("field_order") == (0, 2, 4, 6, 1, 3, 5, 7)
    assert get_format("eqat", bits=3).packing.fields_per_word == 10 and get_format("eqat").n_multiple == 1
    assert get_format("gptq").tensor_schema(64, 256) == {
        "qweight": ((32, 64), "int32"), "qzeros": ((2, 8), "int32"), "scales": ((2, 64), "float16"),
        "g_idx": ((256,), "int32")}
    assert get_format("eqat", bits=3).tensor_schema(37, 256)["qweight"] == ((26, 37), "int32")
    assert get_format("eqat", bits=3).tensor_schema(37, 256)["qzeros"] == ((2, 4), "int32")


def test_bits_per_weight():
    n = k = 4096
    assert get_format("gptq").bits_per_weight(n, k) == 4 + 4 / 128 + 16 / 128
    assert get_format("awq").bits_per_weight(n, k) == 4 + 4 / 128 + 16 / 128
    assert get_format("gptq", bits=3, desc_act=True).bits_per_weight(n, k) == 3 + 3 / 128 + 16 / 128 + 32 / n
    assert get_format("eqat_w3g128").bits_per_weight(n, k) == (410 * 32 * n + 32 * 410 * 32 + 32 * n * 16) / (n * k)


@pytest.mark.parametrize("name,opts,match", [
    ("gptq", dict(bits=5), r"bits = 5 .*\[2, 3, 4, 8\]"),
    ("gptq", dict(bits=True), r"bits = True"),
    ("gptq", dict(group_size=0), r"group_size = 0"),
    ("gptq", dict(group_size=-2), r"group_size = -2"),
    ("gptq", dict(group_size=12.0), r"group_size = 12.0"),
    ("gptq", dict(sym="yes"), r"sym = 'yes' .*\[False, True\]"),
    ("gptq", dict(desc_act=1), r"desc_act = 1"),
    ("gptq", dict(checkpoint="v3"), r"checkpoint = 'v3' .*\['v1', 'v2'\]"),
    ("autoround", dict(bits=6), r"autoround: option bits = 6"),
    ("awq", dict(bits=3), r"awq: option bits = 3 .*\[4\]"),
    ("eqat", dict(bits=1), r"eqat: option bits = 1"),
    ("gptq", dict(wbits=4), r"unknown options \['wbits'\]"),
    ("int4_g128_asym", dict(bits=3), r"unknown options \['bits'\]"),
])
def test_invalid_options(name, opts, match):
    with pytest.raises(SpecError, match=match):
        get_format(name, **opts)


@pytest.mark.parametrize("name,opts,shape,match", [
    ("gptq", {}, (64, 200), r"K = 200 .* multiple of 128"),
    ("gptq", dict(bits=3, group_size=16), (64, 48), r"K = 48 .* multiple of 32"),
    ("gptq", {}, (20, 256), r"N = 20 .* multiple of 8"),
    ("gptq", dict(bits=3), (48, 256), r"N = 48 .* multiple of 32"),
    ("awq", {}, (12, 256), r"N = 12 .* multiple of 8"),
    ("eqat", dict(group_size=64), (8, 96), r"K = 96 .* multiple of 64"),
])
def test_invalid_shapes(name, opts, shape, match):
    with pytest.raises(SpecError, match=match):
        quantize(get_format(name, **opts), torch.zeros(shape))


def test_invalid_weights_and_tensors(gen):
    spec = get_format("gptq")
    with pytest.raises(SpecError, match="dtype"):
        quantize(spec, torch.zeros(N, K, dtype=torch.int32))
    with pytest.raises(SpecError, match="overflows the fp16 scale"):
        quantize(spec, torch.full((N, K), 1e7))
    qt = quantize(spec, torch.randn(N, K, generator=gen))
    bad = dict(qt.tensors, scales=qt.tensors["scales"].float())
    with pytest.raises(SpecError, match="'scales' has shape .* dtype torch.float32"):
        QuantizedTensor(spec, (N, K), bad)


# -- round trip -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts", ROUND_TRIP, ids=_ids(ROUND_TRIP))
def test_round_trip_error_bound(name, opts, gen):
    spec = get_format(name, **opts)
    n = 37 if spec.family == "eqat" else N  # eqat pads the last qzeros word: no N constraint
    W = torch.randn(n, K, generator=gen)
    qt = quantize(spec, W)
    Wq = dequantize(qt).double()
    s = element_scales(spec, qt.tensors, K)
    # Bound: codes are round(x/s) + z against the stored fp16 scale s, on a grid [-z*s, (maxq-z)*s] that covers
    # the group range [xmin, xmax] (0 always inside). Unclamped codes are off by at most s/2. The exact scale
    # (xmax-xmin)/maxq differs from the stored fp16 s by at most 2^-11 relative, so the grid ends can miss the
    # range by at most maxq * 2^-11 * s (bound taken as maxq * 2^-10 * s for slack); decode rounds s*(q-z)
    # once to fp16, adding at most 2^-11 |Wq|. So |W - Wq| <= s*(1/2 + maxq*2^-10) + 2^-11*|Wq|.
    err = (W.double() - Wq).abs()
    bound = rtn_bound(spec, qt.tensors, Wq)
    assert (err <= bound).all(), float((err - bound).max())
    assert float((err / s).mean()) < 0.3  # uniform rounding error averages s/4: the bound is not vacuous
    assert torch.equal(dequantize(qt), dequantize(quantize(spec, W)))  # deterministic encode and decode
    assert torch.equal(dequantize(qt), dequantize(qt))


def unpacked(spec, tensors, n, K):
    """(codes [K, n], zero points [G, n]) through the codec's own unpack helpers."""
    bits, qw, qz = spec.param("bits"), tensors["qweight"], tensors["qzeros"]
    if spec.family == "gptq":
        return gptq_unpack_codes(qw, bits, K), gptq_unpack_zeros(qz, bits, n, spec.decode.param("zero_offset"))
    if spec.family == "awq":
        return awq_unpack_cols(qw, n), awq_unpack_cols(qz, n)
    return eqat_unpack_codes(qw, bits, K), eqat_unpack_zeros(qz, bits, n)


@pytest.mark.parametrize("name,opts", ASYM, ids=_ids(ASYM))
def test_reencode_reproduces_codes(name, opts, gen):
    # asym only (sym is not idempotent: a positive absmax decodes to (maxq-z)*s < absmax and shrinks the scale).
    # A group whose codes span [0, maxq] decodes to a min and max that give back its scale (to fp16 rounding) and
    # zero, so its codes come back. A group misses an end code when frac(-xmin/s) is near 1/2 and the fp16 rounding
    # of the scale tips both extremes inward; re-encoding narrows it, so such (rare) groups are left out.
    # At 8 bits the fp16 decode of s*(q-z), |q-z| <= 255, is off by up to 1/8 step: codes may move by one.
    spec = get_format(name, **opts)
    bits, maxq = spec.param("bits"), 2 ** spec.param("bits") - 1
    W = torch.randn(N, K, generator=gen)
    t1 = quantize(spec, W).tensors
    t2 = quantize(spec, dequantize(QuantizedTensor(spec, (N, K), t1))).tensors
    (q1, z1), (q2, z2) = unpacked(spec, t1, N, K), unpacked(spec, t2, N, K)
    G = z1.shape[0]
    grouped = q1.reshape(G, K // G, N)
    spans = (grouped.amin(1) == 0) & (grouped.amax(1) == maxq)  # [G, N]
    assert float(spans.float().mean()) > 0.9
    col = spans.repeat_interleave(K // G, dim=0)
    assert int((q1 - q2)[col].abs().max()) <= (1 if bits == 8 else 0)
    assert torch.equal(z1[spans], z2[spans])
    torch.testing.assert_close(t1["scales"][spans], t2["scales"][spans], rtol=2 ** -9, atol=0)


def test_zero_groups_and_zero_point_zero(gen):
    W = torch.randn(N, K, generator=gen)
    W[:, :128] = 0.0  # an all-zero group decodes to exact zeros
    W[:, 128:] = W[:, 128:].abs()  # an all-positive group has zero point 0: v1 stores it as maxq
    for bits in (2, 3, 4, 8):
        v1, v2 = (get_format("gptq", bits=bits, checkpoint=c) for c in ("v1", "v2"))
        t2 = quantize(v2, W)
        W1, W2 = dequantize(quantize(v1, W)), dequantize(t2)
        assert torch.equal(W1, W2) and bool((W1[:, :128] == 0).all())
        zero_points = unpacked(v2, t2.tensors, N, K)[1]
        assert bool((zero_points[1] == 0).any())  # the case the v1 offset wraps
        assert bool(((W2 - W).abs() <= rtn_bound(v2, t2.tensors, W2)).all())


# -- GPTQModel transcriptions (ModelCloud/GPTQModel gptqmodel/nn_modules/qlinear/__init__.py) --------------
WF3 = [[0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0],
       [0, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31],
       [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0]]


def gptqmodel_dequantize_weight(qweight, qzeros, scales, g_idx, bits):
    """PackableQuantLinear.dequantize_weight with int32 words, v2 zero points, num_itr == 1 (returns [K, N] fp16)."""
    maxq = 2 ** bits - 1
    if bits in (2, 4, 8):
        pf = 32 // bits
        wf = torch.tensor(list(range(0, 32, bits)), dtype=torch.int32).unsqueeze(0)
        dequant_dtype = torch.int16 if bits == 8 else torch.int8
        zeros = torch.bitwise_right_shift(torch.unsqueeze(qzeros, 2).expand(-1, -1, pf), wf.unsqueeze(0))
        zeros = zeros.to(dequant_dtype)
        zeros = torch.bitwise_and(zeros, maxq).reshape(scales.shape)
        weight = torch.bitwise_and(torch.bitwise_right_shift(
            torch.unsqueeze(qweight, 1).expand(-1, pf, -1), wf.unsqueeze(-1)).to(dequant_dtype), maxq)
    else:
        wf = torch.tensor(WF3, dtype=torch.int32).reshape(1, 3, 12)
        zeros = qzeros.reshape(qzeros.shape[0], qzeros.shape[1] // 3, 3, 1).expand(-1, -1, -1, 12)
        zeros = torch.bitwise_right_shift(zeros, wf.unsqueeze(0))
        zeros[:, :, 0, 10] = (zeros[:, :, 0, 10] & 0x3) | ((zeros[:, :, 1, 0] << 2) & 0x4)
        zeros[:, :, 1, 11] = (zeros[:, :, 1, 11] & 0x1) | ((zeros[:, :, 2, 0] << 1) & 0x6)
        zeros = zeros & 0x7
        zeros = torch.cat([zeros[:, :, 0, :11], zeros[:, :, 1, 1:12], zeros[:, :, 2, 1:11]], dim=2)
        zeros = zeros.reshape(scales.shape)
        weight = qweight.reshape(qweight.shape[0] // 3, 3, 1, qweight.shape[1]).expand(-1, -1, 12, -1)
        weight = torch.bitwise_right_shift(weight, wf.unsqueeze(-1)) & 0x7
        weight[:, 0, 10] = (weight[:, 0, 10] & 0x3) | ((weight[:, 1, 0] << 2) & 0x4)
        weight[:, 1, 11] = (weight[:, 1, 11] & 0x1) | ((weight[:, 2, 0] << 1) & 0x6)
        weight = weight & 0x7
        weight = torch.cat([weight[:, 0, :11], weight[:, 1, 1:12], weight[:, 2, 1:11]], dim=1)
    weight = weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2])
    return scales[g_idx.long()] * (weight - zeros[g_idx.long()])


def gptqmodel_pack_original(int_weight, bits):
    """pack_original's numpy loop: int codes [K, N] -> qweight int32 [K//32*bits, N].
    (Its qzeros loop is the same one run along N: pass the transposed [G, N] zero points.)"""
    int_weight = int_weight.numpy().astype(np.uint32)
    qweight = np.zeros((int_weight.shape[0] // 32 * bits, int_weight.shape[1]), dtype=np.uint32)
    if bits in (2, 4, 8):
        pf = 32 // bits
        for row in range(qweight.shape[0]):
            for j in range(pf):
                qweight[row] |= int_weight[row * pf + j] << (bits * j)
    else:
        i = row = 0
        while row < qweight.shape[0]:
            for j in range(i, i + 10):
                qweight[row] |= int_weight[j] << (3 * (j - i))
            i += 10
            qweight[row] |= int_weight[i] << 30
            row += 1
            qweight[row] |= (int_weight[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= int_weight[j] << (3 * (j - i) + 1)
            i += 10
            qweight[row] |= int_weight[i] << 31
            row += 1
            qweight[row] |= (int_weight[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= int_weight[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
    return torch.from_numpy(qweight.astype(np.int32))


def gptqmodel_v1_to_v2(qzeros, bits):
    """convert_gptq_v1_to_v2_format_module (int32): a word-wise add for 2/4/8 bits; for 3 bits a per-field +1
    (GPTQModel's _correct_gptq_v1_qzeros, through its 3-bit column unpack/pack helpers)."""
    if bits != 3:
        const = {2: 0b01010101010101010101010101010101, 4: 0b00010001000100010001000100010001,
                 8: 0b00000001000000010000000100000001}[bits]
        return qzeros + const  # int32 wrap-around, like the in-place += on the module buffer
    rows, cols = qzeros.shape
    w = qzeros.to(torch.int64).reshape(rows, cols // 3, 3)
    w0, w1, w2 = w[..., 0], w[..., 1], w[..., 2]
    v = torch.empty(rows, cols // 3, 32, dtype=torch.int64)
    for idx in range(10):
        v[..., idx] = (w0 >> (3 * idx)) & 0x7
        v[..., 11 + idx] = (w1 >> (1 + 3 * idx)) & 0x7
        v[..., 22 + idx] = (w2 >> (2 + 3 * idx)) & 0x7
    v[..., 10] = ((w0 >> 30) & 0x3) | ((w1 << 2) & 0x4)
    v[..., 21] = ((w1 >> 31) & 0x1) | ((w2 << 1) & 0x6)
    v = (v + 1) & 0x7
    n0, n1, n2 = (v[..., 10] << 30), (v[..., 10] >> 2) & 0x1, (v[..., 21] >> 1) & 0x3
    n1 = n1 | (v[..., 21] << 31)
    for idx in range(10):
        n0 = n0 | (v[..., idx] << (3 * idx))
        n1 = n1 | (v[..., 11 + idx] << (1 + 3 * idx))
        n2 = n2 | (v[..., 22 + idx] << (2 + 3 * idx))
    packed = torch.stack((n0, n1, n2), dim=2).reshape(rows, cols) & 0xFFFFFFFF
    return torch.where(packed >= 2 ** 31, packed - 2 ** 32, packed).to(torch.int32)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_pack_matches_gptqmodel_bytes(bits, gen):
    codes = torch.randint(0, 2 ** bits, (K, N), generator=gen)
    ours = gptq_pack_codes(codes, bits)
    assert ours.dtype == torch.int32
    assert torch.equal(ours, gptqmodel_pack_original(codes, bits))
    zeros = torch.randint(0, 2 ** bits, (K // 128, N), generator=gen)
    assert torch.equal(gptq_pack_zeros(zeros, bits, 0), gptqmodel_pack_original(zeros.t(), bits).t())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_decode_matches_gptqmodel_with_shuffled_g_idx(bits, gen):
    spec = get_format("gptq", bits=bits, group_size=32, desc_act=True, checkpoint="v2")
    G = K // 32
    q = torch.randint(0, 2 ** bits, (K, N), generator=gen)
    z = torch.randint(0, 2 ** bits, (G, N), generator=gen)
    scales = (torch.rand(G, N, generator=gen) * 0.1 + 1e-3).half()
    shuffled = group_index(torch.randperm(K, generator=gen), 32).to(torch.int32)
    for g_idx in (shuffled, torch.randint(0, G, (K,), generator=gen, dtype=torch.int32)):  # any in-range g_idx
        tensors = {"qweight": gptq_pack_codes(q, bits), "qzeros": gptq_pack_zeros(z, bits, 0), "scales": scales,
                   "g_idx": g_idx}
        ref = gptqmodel_dequantize_weight(tensors["qweight"], tensors["qzeros"], scales, g_idx, bits)
        ours = dequantize(QuantizedTensor(spec, (N, K), tensors))
        assert ref.dtype == torch.float16
        assert torch.equal(ours.t().half(), ref) and torch.equal(ours, ours.half().float())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_v1_vs_v2(bits, gen):
    W = torch.randn(N, K, generator=gen)
    t1 = quantize(get_format("gptq", bits=bits, checkpoint="v1"), W)
    t2 = quantize(get_format("gptq", bits=bits, checkpoint="v2"), W)
    assert torch.equal(t1.tensors["qweight"], t2.tensors["qweight"])
    assert torch.equal(t1.tensors["scales"], t2.tensors["scales"])
    f1 = gptq_unpack_zeros(t1.tensors["qzeros"], bits, N, 0)  # the fields as stored
    f2 = gptq_unpack_zeros(t2.tensors["qzeros"], bits, N, 0)
    assert bool((f2 >= 1).all())  # Gaussian groups: no zero point 0, so no carry in the word-wise conversion
    assert torch.equal(f2 - f1, torch.ones_like(f1))
    assert torch.equal(dequantize(t1), dequantize(t2))
    # GPTQModel's v1 -> v2 load conversion turns our v1 qzeros into our v2 qzeros
    assert torch.equal(gptqmodel_v1_to_v2(t1.tensors["qzeros"], bits), t2.tensors["qzeros"])
    # AutoRound's export (zeros -= 1, then GPTQModel's packing loop) writes the same bytes as autoround / gptq v1
    ar = quantize(get_format("autoround", bits=bits, sym=False), W)
    assert all(torch.equal(ar.tensors[k], t1.tensors[k]) for k in ("qweight", "qzeros", "scales"))
    assert torch.equal(gptqmodel_pack_original((f2 - 1).t(), bits).t(), ar.tensors["qzeros"])


def test_desc_act_encoder(gen):
    spec = get_format("gptq", bits=4, group_size=32, desc_act=True)
    W = torch.randn(N, K, generator=gen)
    hdiag = torch.rand(K, generator=gen)
    qt = quantize(spec, W, hessian_diag=hdiag)
    perm = torch.argsort(hdiag, descending=True, stable=True)
    assert torch.equal(qt.tensors["g_idx"].long(), group_index(perm, 32))
    assert torch.equal(quantize(spec, W, perm=perm).tensors["qweight"], qt.tensors["qweight"])
    Wq = dequantize(qt)
    assert bool(((Wq.double() - W.double()).abs() <= rtn_bound(spec, qt.tensors, Wq)).all())
    assert torch.equal(quantize(spec, W).tensors["g_idx"].long(), torch.arange(K) // 32)  # no Hessian: i // g


def test_g_idx_checks(gen):
    W = torch.randn(N, K, generator=gen)
    plain, act = get_format("gptq"), get_format("gptq", desc_act=True)
    with pytest.raises(SpecError, match="needs desc_act=True"):
        quantize(plain, W, perm=torch.arange(K))
    with pytest.raises(SpecError, match="unknown calibration inputs \\['act_absmax'\\]"):
        quantize(act, W, act_absmax=torch.ones(K))
    with pytest.raises(SpecError, match="permutation of range\\(256\\)"):
        quantize(act, W, perm=torch.zeros(K, dtype=torch.long))
    t = quantize(act, W).tensors
    with pytest.raises(SpecError, match="g_idx values must lie in \\[0, 2\\)"):
        dequantize(QuantizedTensor(act, (N, K), dict(t, g_idx=torch.full((K,), 2, dtype=torch.int32))))
    trivial = dict(t)  # desc_act=False accepts only the trivial g_idx GPTQ checkpoints always carry
    assert torch.equal(dequantize(QuantizedTensor(plain, (N, K), trivial)), dequantize(QuantizedTensor(act, (N, K), t)))
    shuffled = dict(t, g_idx=t["g_idx"].flip(0))
    with pytest.raises(SpecError, match="use desc_act=True"):
        dequantize(QuantizedTensor(plain, (N, K), shuffled))


# -- AutoAWQ transcription (casper-hansen/AutoAWQ awq/utils/packing_utils.py, awq/modules/linear/gemm.py) ----
def autoawq_dequantize_gemm(qweight, qzeros, scales, bits, group_size):
    shifts = torch.arange(0, 32, bits)
    iweights = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).to(torch.int8)
    iweights = iweights.view(iweights.shape[0], -1)
    izeros = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).to(torch.int8)
    izeros = izeros.view(izeros.shape[0], -1)
    reverse = torch.arange(izeros.shape[-1], dtype=torch.int32).view(-1, 32 // bits)
    reverse = reverse[:, [0, 4, 1, 5, 2, 6, 3, 7]].view(-1)  # AWQ_REVERSE_ORDER
    izeros, iweights = izeros[:, reverse], iweights[:, reverse]
    iweights = torch.bitwise_and(iweights, (2 ** bits) - 1)
    izeros = torch.bitwise_and(izeros, (2 ** bits) - 1)
    scales = scales.repeat_interleave(group_size, dim=0)
    izeros = izeros.repeat_interleave(group_size, dim=0)
    return (iweights - izeros) * scales


def autoawq_pack(intweight):
    """WQLinear_GEMM.from_linear's loop: intweight [K, N] -> int32 [K, N/8]."""
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    qweight = torch.zeros((intweight.shape[0], intweight.shape[1] // 8), dtype=torch.int32)
    for col in range(intweight.shape[1] // 8):
        for i in range(8):
            qweight[:, col] |= intweight[:, col * 8 + order_map[i]].to(torch.int32) << (i * 4)
    return qweight


def test_awq_matches_autoawq(gen):
    spec = get_format("awq", group_size=64)
    W = torch.randn(N, K, generator=gen)
    t = quantize(spec, W).tensors
    ref = autoawq_dequantize_gemm(t["qweight"], t["qzeros"], t["scales"], 4, 64)
    assert ref.dtype == torch.float16 and torch.equal(dequantize(QuantizedTensor(spec, (N, K), t)).t().half(), ref)
    codes = torch.randint(0, 16, (K, N), generator=gen)
    assert torch.equal(awq_pack_cols(codes), autoawq_pack(codes))


# -- EfficientQAT transcription (OpenGVLab/EfficientQAT quantize/int_linear_real.py, triton_utils/kernels.py) --
def eqat_pack(intweight, bits):
    """QuantLinear.pack's qweight loop: [K, N] -> int32 [ceil(K/(32//bits)), N]; the last word may be partial."""
    intweight = intweight.numpy().astype(np.uint32)
    per = 32 // bits
    qweight = np.zeros((-(-intweight.shape[0] // per), intweight.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        for j in range(i, min(i + per, intweight.shape[0])):
            qweight[row] |= intweight[j] << (bits * (j - i))
        i += per
        row += 1
    return torch.from_numpy(qweight.astype(np.int32))


def eqat_forward_weight(qweight, qzeros, scales, bits, group_size, K, N):
    """dequant_dim0 / dequant_dim1 index math, then QuantLinear.forward's fp16 (w - z) * s."""
    per, maxq = 32 // bits, 2 ** bits - 1
    m, n = torch.arange(K)[:, None], torch.arange(N)[None, :]
    weight = ((qweight[m // per, n] >> ((m % per) * bits)) & maxq).half()
    g = torch.arange(scales.shape[0])[:, None]
    zeros = ((qzeros[g, n // per] >> ((n % per) * bits)) & maxq).half()
    return ((weight.view(-1, group_size, N) - zeros.view(-1, 1, N)) * scales.view(-1, 1, N)).reshape(K, N)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_eqat_matches_origin(bits, gen):
    n = 37
    spec = get_format("eqat", bits=bits, group_size=64)
    W = torch.randn(n, K, generator=gen)
    t = quantize(spec, W).tensors
    ref = eqat_forward_weight(t["qweight"], t["qzeros"], t["scales"], bits, 64, K, n)
    assert torch.equal(dequantize(QuantizedTensor(spec, (n, K), t)).t().half(), ref)
    codes = torch.randint(0, 2 ** bits, (K, n), generator=gen)
    assert torch.equal(eqat_pack_codes(codes, bits), eqat_pack(codes, bits))
    assert torch.equal(t["qzeros"], eqat_pack(eqat_unpack_zeros(t["qzeros"], bits, n).t(), bits).t())
    with_g_idx = dict(t, g_idx=torch.zeros(K, dtype=torch.int32))  # stored but never read by the origin
    assert torch.equal(dequantize(QuantizedTensor(spec, (n, K), with_g_idx)),
                       dequantize(QuantizedTensor(spec, (n, K), t)))
