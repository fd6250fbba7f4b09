"""Vector-codebook formats: VPTQ, AQLM, HIGGS (ir/formats/vptq.py, aqlm.py, higgs.py, ir/codebook.py).

Byte layouts and decode are checked against independent transcriptions of the origins' reference code
(written here from reading microsoft/VPTQ vptq/ops/quant_gemm.py `dequant` + vptq/utils/pack.py,
Vahe1994/AQLM inference_lib/src/aqlm/utils.py, transformers integrations/higgs.py + FLUTE's
prepare_data), on random stored tensors, not only on our own encoder's output.

Error bounds on Gaussian data (rel = ||W - Wq||_F / ||W||_F), per scalar dimension at rate R bits:
  * Shannon's rate-distortion bound: MSE >= 2**(-2R) of the variance, so rel >= 2**-R for any
    quantizer fitted on enough data (we keep >= 32 training vectors per centroid, so in-sample
    overfitting cannot beat it noticeably);
  * a converged k-means vector quantizer is at least as good as the Lloyd-Max scalar quantizer at
    the same rate (a product of scalar quantizers is one of its candidate codebooks): Gaussian
    Lloyd-Max MSE is 0.3634 at 1 bit, 0.1175 at 2, 0.03454 at 3, 0.009497 at 4 bits.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import ir
from ir.codebook import kmeans, nearest_codeword, nearest_codeword_exact, pack_index_stream, unpack_index_stream
from ir.formats.aqlm import pack_codes, unpack_codes
from ir.formats.higgs import decode_higgs_rotated, higgs_grid
from ir.hadamard import block_hadamard, hadamard_matrix

LLOYD_MAX_MSE = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}

FORMATS = [
    ("vptq", {}), ("vptq_v8_k65536_256", {}), ("vptq_v8_k65536", {}), ("vptq_v8_k4096", {}),
    ("vptq_v16_k65536_65536", {}),
    ("vptq", dict(num_centroids=256, num_res_centroids=16, outlier_size=32, num_outlier_centroids=64,
                  group_size=240, packed=False)),
    ("aqlm", {}), ("aqlm_1x16", {}), ("aqlm_2x8", {}), ("aqlm", dict(num_codebooks=3, nbits=6, out_group_size=2)),
    ("higgs", {}), *[(f"higgs_p{p}_b{b}", {}) for p in (1, 2) for b in (2, 3, 4)],
    ("higgs", dict(p=1, bits=3, group_size=64, hadamard_size=256)),
]


def rel_err(W, Wq):
    return ((W - Wq).norm() / W.norm()).item()


# --------------------------------------------------------------------------------------------------
# spec JSON, keys, listing
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts", FORMATS)
def test_spec_json_round_trip_and_key(name, opts):
    spec = ir.get_format(name, **opts)
    back = ir.FormatSpec.from_json(spec.to_json())
    assert back == spec and back.key == spec.key
    assert ir.get_format(name, **opts).key == spec.key
    json.loads(spec.to_json())


def test_keys_differ_between_options_and_names_follow_options():
    keys = {ir.get_format(n, **o).key for n, o in FORMATS if not (n in ("vptq", "aqlm", "higgs") and not o)}
    assert len(keys) == len(FORMATS) - 3
    assert ir.get_format("vptq").key == ir.get_format("vptq_v8_k65536_256").key
    assert ir.get_format("aqlm", num_codebooks=2, nbits=8).name == "aqlm_2x8"
    assert ir.get_format("vptq", perm=False).key != ir.get_format("vptq").key
    assert ir.get_format("higgs", group_size=128).name == "higgs_p2_b4_g128_h1024"
    # outlier options are irrelevant without outliers and do not change the key
    assert ir.get_format("vptq", outlier_vector_len=4).key == ir.get_format("vptq").key


def test_bits_per_weight_at_4096():
    bpw = {n: ir.get_format(n).bits_per_weight(4096, 4096) for n in
           ("vptq_v8_k65536_256", "vptq_v8_k4096", "aqlm_1x16", "aqlm_2x8", "higgs_p2_b4", "higgs_p1_b3")}
    # indices 3 bits + 1 MiB codebook (0.5) + residual book, perm, scale, bias
    assert bpw["vptq_v8_k65536_256"] == pytest.approx(3 + 0.5 + (4096 + 3 * 8192) * 8 / 4096 ** 2)
    assert bpw["vptq_v8_k4096"] == pytest.approx(1.5 + (65536 + 3 * 8192) * 8 / 4096 ** 2)
    assert bpw["aqlm_1x16"] == pytest.approx(2 + 0.5 + 4096 * 16 / 4096 ** 2)
    assert bpw["aqlm_2x8"] == pytest.approx(2 + (2 * 256 * 8 * 16 + 4096 * 16) / 4096 ** 2)
    # codes + fp16 scale per 256 + the stored fp16 grid (256 x 2 / 8 x 1 values)
    assert bpw["higgs_p2_b4"] == pytest.approx(4 + 16 / 256 + 256 * 2 * 16 / 4096 ** 2)
    assert bpw["higgs_p1_b3"] == pytest.approx(3 + 16 / 256 + 8 * 16 / 4096 ** 2)


# --------------------------------------------------------------------------------------------------
# VPTQ: transcriptions of pack_index / unpack_index_tensor / dequant
# --------------------------------------------------------------------------------------------------
def ref_pack_index(idx, index_bits, res_idx=None, res_bits=0):
    """pack_index: merged (res << index_bits) | idx, expanded to bits LSB-first, padded per row to 32."""
    total = index_bits + res_bits
    merged = idx if res_idx is None else (res_idx << index_bits) | idx
    bits = (merged.unsqueeze(-1) >> torch.arange(total)) & 1
    bits = bits.reshape(*merged.shape[:-1], -1)
    bits = F.pad(bits, (0, (32 - bits.shape[-1] % 32) % 32)).reshape(*merged.shape[:-1], -1, 32)
    words = (bits << torch.arange(32)).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def ref_unpack_index(packed, index_bits, n, res_bits=0):
    """unpack_index_tensor, with the origin's pad_size = (words*32) % (n*(index_bits+res_bits))."""
    total = index_bits + res_bits
    bits = (packed.to(torch.int64).unsqueeze(-1) >> torch.arange(32)) & 1
    bits = bits.reshape(*packed.shape[:-1], -1)
    pad = (packed.shape[-1] * 32) % (index_bits * n + res_bits * n)
    if pad:
        bits = bits[..., :-pad]
    vals = (bits.reshape(*packed.shape[:-1], -1, total) << torch.arange(total)).sum(-1)
    idx = vals & ((1 << index_bits) - 1)
    res = (vals >> index_bits) & ((1 << index_bits) - 1) if res_bits else None
    return idx, res


def ref_vptq_dequant(t, p, N, K):
    """VPTQ dequant (vptq/ops/quant_gemm.py) for vector_quant_dim='out': gather along dim 1 of
    [nc, k, vl] with expanded indices, all in fp16. (The origin's unpack ends with .squeeze(), which
    would drop a single-codebook dim; the shape is kept here.)"""
    vl, nk, nr, O = p["vector_len"], p["num_centroids"], p["num_res_centroids"], p["outlier_size"]
    G = (K - O) if p["group_size"] < 0 else p["group_size"]
    nc = (K - O) // G
    if p["packed"]:
        idx, ridx = ref_unpack_index(t["indices"], int(math.log2(nk)), G, int(math.log2(nr)) if nr else 0)
    else:
        idx = t["indices"].view(torch.uint16).to(torch.int64)
        ridx = t["res_indices"].view(torch.uint16).to(torch.int64) if nr else None

    def select(books, ind, n_books, entries, vlen, gsize):
        books = books.view(n_books, entries, vlen)
        ind = ind.unsqueeze(-1).expand(-1, -1, -1, vlen).reshape(n_books, -1, vlen)
        sel = torch.gather(books, 1, ind).view(n_books, -1, gsize, vlen).permute(0, 1, 3, 2)
        return sel.reshape(n_books, -1, gsize).permute(1, 0, 2).reshape(-1, n_books * gsize)

    q = select(t["centroids"], idx, nc, nk, vl, G)
    if nr:
        q = q + select(t["res_centroids"], ridx, nc, nr, vl, G)
    pad = (-N) % vl
    if pad:
        q = q[:-pad, :]
    if O:
        ovl = p["outlier_vector_len"]
        oq = select(t["outlier_centroids"], t["outlier_indices"].view(torch.uint16).to(torch.int64), 1,
                    p["num_outlier_centroids"], ovl, O)
        if (-N) % ovl:
            oq = oq[:-((-N) % ovl), ]
        q = torch.cat([oq, q], dim=1)
    if p["perm"]:
        perm = t["perm"].view(torch.uint16).to(torch.int64) if p["packed"] else t["perm"]
        q = q[:, torch.argsort(perm)]
    if p["norm"]:
        q = q * t["weight_scale"] + t["weight_bias"]
    return q


def random_tensors(spec, N, K, gen):
    """Random stored tensors of the spec's schema: codes uniform in range, fp16 values ~ N(0, 1)."""
    out = {}
    p = dict(spec.params)
    for name, (shape, dtype) in spec.tensor_schema(N, K).items():
        if dtype == "float16":
            out[name] = torch.randn(shape, generator=gen).to(torch.float16)
        elif name == "perm":
            order = torch.randperm(K, generator=gen)
            out[name] = order if dtype == "int64" else torch.where(order >= 32768, order - 65536, order).to(torch.int16)
        elif name == "indices" and dtype == "int32":
            G = (K - p["outlier_size"]) if p["group_size"] < 0 else p["group_size"]
            merged = torch.randint(0, 2 ** (p["index_bits"] + p["res_bits"]), (*shape[:2], G), generator=gen)
            out[name] = ref_pack_index(merged, p["index_bits"] + p["res_bits"])
        else:  # int16 uint16-view indices
            entries = {"indices": p["num_centroids"], "res_indices": p["num_res_centroids"],
                       "outlier_indices": p["num_outlier_centroids"]}[name]
            v = torch.randint(0, entries, shape, generator=gen)
            out[name] = torch.where(v >= 32768, v - 65536, v).to(torch.int16)
    return out


VPTQ_DECODE_CASES = [
    ("vptq", dict(vector_len=8, num_centroids=65536, num_res_centroids=256)),
    ("vptq", dict(vector_len=6, num_centroids=512, num_res_centroids=128, outlier_size=24, outlier_vector_len=4,
                  num_outlier_centroids=32, group_size=50)),
    ("vptq", dict(vector_len=4, num_centroids=4096, num_res_centroids=0, perm=False, norm=False)),
    ("vptq", dict(vector_len=8, num_centroids=65536, num_res_centroids=4096, packed=False, outlier_size=8,
                  outlier_vector_len=4, num_outlier_centroids=16)),
]


@pytest.mark.parametrize("name,opts", VPTQ_DECODE_CASES)
def test_vptq_decode_matches_origin_transcription(name, opts, gen):
    spec = ir.get_format(name, **opts)
    N, K = 37, 224  # N not a multiple of vector_len: padded rows are dropped
    t = random_tensors(spec, N, K, gen)
    got = ir.dequantize(ir.QuantizedTensor(spec, (N, K), t))
    ref = ref_vptq_dequant(t, dict(spec.params), N, K)
    assert ref.dtype == torch.float16
    assert torch.equal(got, ref.to(torch.float32))


@pytest.mark.parametrize("ib,rb", [(16, 8), (12, 0), (13, 5), (16, 16), (8, 8), (3, 2)])
def test_vptq_index_stream_matches_pack_index(ib, rb, gen):
    shape = (2, 5, 97)  # 97 codes: rows end mid-word and are padded
    idx = torch.randint(0, 2 ** ib, shape, generator=gen)
    res = torch.randint(0, 2 ** rb, shape, generator=gen) if rb else None
    merged = (res << ib) | idx if rb else idx
    words = pack_index_stream(merged, ib + rb)
    assert words.dtype == torch.int32 and words.shape == (2, 5, -(-97 * (ib + rb) // 32))
    assert torch.equal(words, ref_pack_index(idx, ib, res, rb))
    got = unpack_index_stream(words, ib + rb, 97)
    ref_idx, ref_res = ref_unpack_index(words, ib, 97, rb)
    assert torch.equal(got & ((1 << ib) - 1), ref_idx) and torch.equal(got, merged)
    if rb:
        assert torch.equal(got >> ib, ref_res)


def test_vptq_index_stream_hand_vector():
    # two 12-bit codes 0xABC, 0x123: stream bits 0..11 = 0xABC, 12..23 = 0x123 -> one word 0x123ABC
    assert pack_index_stream(torch.tensor([[0xABC, 0x123]]), 12).tolist() == [[0x123ABC]]
    # three 24-bit codes straddle: word0 = c0 | (c1 & 0xFF) << 24, word1 = c1 >> 8 | (c2 & 0xFFFF) << 16
    c = torch.tensor([[0x010203, 0x0A0B0C, 0x112233]])
    w = pack_index_stream(c, 24).to(torch.int64) & 0xFFFFFFFF
    assert w.tolist() == [[0x0C010203, 0x22330A0B, 0x00000011]]


def test_vptq_round_trip_exact_fit_regime(gen):
    # 64x256 with vl=8 gives 2048 vectors < 65536 centroids: every vector is its own centroid (the
    # codebook padded with copies to 65536), so the only error is fp16 rounding of the centroids, the
    # residual add and the scale/bias ops: a few units of 2**-11 relative; bound 2e-3.
    spec = ir.get_format("vptq_v8_k65536_256")
    W = torch.randn(64, 256, generator=gen)
    qt = ir.quantize(spec, W)
    assert rel_err(W, ir.dequantize(qt)) < 2e-3
    assert qt.tensors["centroids"].shape == (1, 65536 * 8)


@pytest.mark.parametrize("vl,rate", [(4, 2), (8, 1)])
def test_vptq_round_trip_kmeans_bounds(vl, rate, gen):
    # 256 centroids of vl dims: rate 8/vl bits per weight; 128x512 gives 16384 (vl 4) / 8192 (vl 8)
    # vectors, >= 32 per centroid. Shannon: rel >= 2**-rate; k-means beats Lloyd-Max at that rate.
    spec = ir.get_format("vptq", vector_len=vl, num_centroids=256, num_res_centroids=0)
    W = torch.randn(128, 512, generator=gen)
    err = rel_err(W, ir.dequantize(ir.quantize(spec, W, kmeans_iters=8)))
    assert 2.0 ** -rate < err < math.sqrt(LLOYD_MAX_MSE[rate])


def test_vptq_residual_outliers_perm(gen):
    # 16 heavy columns (x20) must land in the outlier block through the perm (largest norm first)
    W = torch.randn(64, 272, generator=gen)
    heavy = torch.randperm(272, generator=gen)[:16]
    W[:, heavy] *= 20
    base = dict(vector_len=4, num_centroids=64, outlier_size=16, outlier_vector_len=4, num_outlier_centroids=64,
                group_size=128)
    plain = ir.get_format("vptq", num_res_centroids=0, **base)
    resid = ir.get_format("vptq", num_res_centroids=16, **base)
    qp, qr = ir.quantize(plain, W, kmeans_iters=5), ir.quantize(resid, W, kmeans_iters=5)
    perm = qr.tensors["perm"].to(torch.int64) & 0xFFFF
    assert set(perm[:16].tolist()) == set(heavy.tolist())
    assert qr.tensors["indices"].shape == (2, 16, 128 * 10 // 32)
    assert rel_err(W, ir.dequantize(qr)) < rel_err(W, ir.dequantize(qp)) < 0.5


def test_vptq_hessian_weighting_orders_perm(gen):
    spec = ir.get_format("vptq", vector_len=4, num_centroids=16, num_res_centroids=0)
    W = torch.randn(16, 64, generator=gen)
    h = torch.rand(64, generator=gen)
    qt = ir.quantize(spec, W, hessian_diag=h, kmeans_iters=2)
    assert torch.equal(qt.tensors["perm"].to(torch.int64), torch.argsort(h, descending=True, stable=True))


def test_vptq_reassignment_reproduces_indices(gen):
    # Re-encoding the decoded weights against the stored codebook gives back the stored indices
    # (without norm/perm/residual the decoded vectors are exactly codebook rows). A refit of the
    # codebook by k-means would not reproduce them, so that is what "re-encoding" can promise here.
    spec = ir.get_format("vptq", vector_len=4, num_centroids=64, num_res_centroids=0, perm=False, norm=False)
    W = torch.randn(32, 128, generator=gen)
    qt = ir.quantize(spec, W, kmeans_iters=4)
    Wq = ir.dequantize(qt)
    vecs = Wq.reshape(8, 4, 128).permute(0, 2, 1).reshape(-1, 4)
    book = qt.tensors["centroids"].view(64, 4)
    assert len(torch.unique(book, dim=0)) == 64
    idx = unpack_index_stream(qt.tensors["indices"], 6, 128).reshape(-1)
    assert torch.equal(nearest_codeword(vecs, book), idx)


def test_vptq_decode_deterministic(gen):
    spec = ir.get_format("vptq", vector_len=4, num_centroids=64, num_res_centroids=4)
    qt = ir.QuantizedTensor(spec, (16, 64), random_tensors(spec, 16, 64, gen))
    assert torch.equal(ir.dequantize(qt), ir.dequantize(qt))


@pytest.mark.parametrize("opts,match", [
    (dict(num_centroids=1000), "num_centroids = 1000"),
    (dict(num_centroids=131072), "num_centroids = 131072"),
    (dict(num_res_centroids=3), "num_res_centroids = 3"),
    (dict(vector_len=0), "vector_len = 0"),
    (dict(group_size=0), "group_size = 0"),
    (dict(outlier_size=-1), "outlier_size = -1"),
    (dict(outlier_size=8, outlier_vector_len=1), "outlier_vector_len = 1"),
    (dict(outlier_size=8, num_outlier_centroids=100), "num_outlier_centroids = 100"),
    (dict(packed="yes"), "packed = 'yes'"),
    (dict(num_centroids=4096, num_res_centroids=65536), "masks the residual index"),
])
def test_vptq_rejects_invalid_options(opts, match):
    with pytest.raises(ir.SpecError, match=match):
        ir.get_format("vptq", **opts)


def test_vptq_rejects_bad_shapes_and_calib():
    spec = ir.get_format("vptq", num_centroids=16, num_res_centroids=0, outlier_size=8, outlier_vector_len=4,
                         num_outlier_centroids=16, group_size=32)
    with pytest.raises(ir.SpecError, match="K = 80 breaks the rule .*must split into groups of 32"):
        ir.quantize(spec, torch.randn(8, 80))  # refused by the spec's shape rule, before the codec
    with pytest.raises(ir.SpecError, match="must exceed outlier_size"):
        ir.quantize(ir.get_format("vptq", outlier_size=64), torch.randn(8, 64))
    with pytest.raises(ir.SpecError, match="unknown calibration keys"):
        ir.quantize(spec, torch.randn(8, 40), act_absmax=1.0)


# --------------------------------------------------------------------------------------------------
# AQLM
# --------------------------------------------------------------------------------------------------
def ref_aqlm_dequant(codes, codebooks, scales):
    """utils._dequantize_weight(unpack_int_data(codes, nbits), codebooks, scales): embedding_bag sum
    over books with per-book offsets, times scales, blocks swapped back to [N, K]."""
    nbits = codebooks.shape[1].bit_length() - 1
    codes = codes.to(torch.int64) % 2 ** nbits
    n_out, n_in, M = codes.shape
    _, size, og, ig = codebooks.shape
    offsets = torch.arange(0, M * size, size)
    flat = F.embedding_bag(codes.flatten(0, -2) + offsets, codebooks.flatten(0, 1).flatten(-2, -1), mode="sum")
    blocks = flat.view(n_out, n_in, og, ig).mul(scales)
    return blocks.swapaxes(-3, -2).reshape(n_out * og, n_in * ig)


@pytest.mark.parametrize("name,opts", [("aqlm_1x16", {}), ("aqlm_2x8", {}),
                                       ("aqlm", dict(num_codebooks=2, nbits=5, out_group_size=2, in_group_size=4))])
def test_aqlm_decode_matches_origin_transcription(name, opts, gen):
    # M <= 2: embedding_bag's sum of at most two fp16 values is exact in float32, so the fp16
    # transcription and our fp32-sum-then-round decode must agree bit for bit.
    spec = ir.get_format(name, **opts)
    N, K = 12, 32
    nbits, M = spec.param("nbits"), spec.param("num_codebooks")
    schema = spec.tensor_schema(N, K)
    codes = pack_codes(torch.randint(0, 2 ** nbits, schema["codes"][0], generator=gen), nbits)
    t = {"codebooks": torch.randn(schema["codebooks"][0], generator=gen).half(), "codes": codes,
         "scales": torch.rand(schema["scales"][0], generator=gen).half() + 0.5}
    got = ir.dequantize(ir.QuantizedTensor(spec, (N, K), t))
    ref = ref_aqlm_dequant(t["codes"], t["codebooks"], t["scales"])
    assert ref.dtype == torch.float16 and M <= 2
    assert torch.equal(got, ref.float())


def test_aqlm_three_books_sum_in_float32(gen):
    spec = ir.get_format("aqlm", num_codebooks=3, nbits=4)
    schema = spec.tensor_schema(4, 16)
    t = {"codebooks": torch.randn(schema["codebooks"][0], generator=gen).half(),
         "codes": pack_codes(torch.randint(0, 16, schema["codes"][0], generator=gen), 4),
         "scales": torch.ones(schema["scales"][0]).half()}
    ref = ref_aqlm_dequant(t["codes"], t["codebooks"].float(), t["scales"].float()).half().float()
    assert torch.equal(ir.dequantize(ir.QuantizedTensor(spec, (4, 16), t)), ref)


def test_aqlm_signed_codes():
    assert pack_codes(torch.tensor([0, 127, 128, 255]), 8).tolist() == [0, 127, -128, -1]
    assert pack_codes(torch.tensor([0, 127, 128, 255]), 8).dtype == torch.int8
    c16 = pack_codes(torch.tensor([1, 32767, 32768, 65535]), 16)
    assert c16.dtype == torch.int16 and c16.tolist() == [1, 32767, -32768, -1]
    assert unpack_codes(c16, 16).tolist() == [1, 32767, 32768, 65535]
    assert pack_codes(torch.tensor([7, 8, 15]), 4).tolist() == [7, -8, -1]  # nbits < 8: still int8 storage
    # a stored -1 selects the last entry of the codebook
    spec = ir.get_format("aqlm_2x8")
    books = torch.zeros(2, 256, 1, 8, dtype=torch.float16)
    books[0, 255] = torch.arange(8)
    books[1, 128] = 0.5
    t = {"codebooks": books, "codes": torch.tensor([[[-1, -128]]], dtype=torch.int8),
         "scales": torch.full((1, 1, 1, 1), 2.0, dtype=torch.float16)}
    assert ir.dequantize(ir.QuantizedTensor(spec, (1, 8), t)).tolist() == [[1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0]]


def test_aqlm_round_trip_bounds(gen):
    # 2x8: two greedy 1-bit/weight stages (256 entries of 8 dims), 2 bits/weight in all. Shannon at
    # 2 bits: rel >= 0.25; each stage at least as good as 1-bit Lloyd-Max on its (near-Gaussian)
    # input, so rel < 0.3634 = sqrt(0.3634)**2. 128x512 gives 8192 vectors, 32 per entry.
    W = torch.randn(128, 512, generator=gen)
    err = rel_err(W, ir.dequantize(ir.quantize(ir.get_format("aqlm_2x8"), W, kmeans_iters=8)))
    assert 0.25 < err < LLOYD_MAX_MSE[1]
    # 1x16 on 64x256: 2048 vectors < 65536 entries, each its own entry: fp16 rounding only.
    W = torch.randn(64, 256, generator=gen)
    qt = ir.quantize(ir.get_format("aqlm_1x16"), W)
    assert rel_err(W, ir.dequantize(qt)) < 2e-3
    assert qt.tensors["codes"].dtype == torch.int16


def test_aqlm_reassignment_reproduces_codes(gen):
    spec = ir.get_format("aqlm", num_codebooks=1, nbits=6)
    W = torch.randn(32, 128, generator=gen)
    qt = ir.quantize(spec, W, kmeans_iters=4)
    blocks = (ir.dequantize(qt).half() / qt.tensors["scales"].reshape(-1, 1)).float().reshape(-1, 8)
    book = qt.tensors["codebooks"].reshape(64, 8)
    assert torch.equal(nearest_codeword(blocks, book), unpack_codes(qt.tensors["codes"], 6).reshape(-1))


@pytest.mark.parametrize("opts,match", [
    (dict(nbits=17), "nbits = 17"), (dict(nbits=0), "nbits = 0"), (dict(num_codebooks=0), "num_codebooks = 0"),
    (dict(in_group_size=0), "in_group_size = 0"), (dict(out_group_size=True), "out_group_size = True"),
])
def test_aqlm_rejects_invalid_options(opts, match):
    with pytest.raises(ir.SpecError, match=match):
        ir.get_format("aqlm", **opts)


def test_aqlm_rejects_bad_shapes():
    with pytest.raises(ir.SpecError, match="not a multiple of 8"):
        ir.quantize(ir.get_format("aqlm_2x8"), torch.randn(4, 12))
    with pytest.raises(ir.SpecError, match="N = 3"):
        ir.quantize(ir.get_format("aqlm", nbits=4, out_group_size=2), torch.randn(3, 16))


# --------------------------------------------------------------------------------------------------
# HIGGS
# --------------------------------------------------------------------------------------------------
def test_higgs_grids_as_published():
    # MSE-optimal for N(0, 1) (Monte Carlo on 2**17 fresh samples per dimension): the p=1 grids are
    # the Lloyd-Max quantizers (their MSE matches the classical values), the p=2 grids do better.
    x = torch.randn(2 ** 18, generator=torch.Generator().manual_seed(0))
    for p in (1, 2):
        for bits in (2, 3, 4):
            g = higgs_grid(p, bits)
            assert g.shape == (2 ** (p * bits), p)
            v = x.view(-1, p)
            mse = (v - g[nearest_codeword(v, g)]).pow(2).mean().item()
            if p == 1:
                assert mse == pytest.approx(LLOYD_MAX_MSE[bits], rel=0.03)
            else:
                assert 2.0 ** (-2 * bits) < mse < LLOYD_MAX_MSE[bits]
    # values typed from transformers integrations/higgs.py get_higgs_grid (commit c223ef09)
    assert higgs_grid(2, 2)[0].tolist() == pytest.approx([-0.8996632695198059, -1.6360418796539307], abs=0)
    assert higgs_grid(2, 2)[13].tolist() == pytest.approx([-0.0011779458727687597, 0.00022069070837460458], abs=0)
    assert higgs_grid(2, 3)[63].tolist() == pytest.approx([0.6934980154037476, 1.7714335918426514], abs=0)
    assert higgs_grid(2, 4)[0].tolist() == pytest.approx([-2.501467704772949, 0.17954708635807037], abs=0)
    assert higgs_grid(2, 4)[255].tolist() == pytest.approx([-0.7835946083068848, 1.6869111061096191], abs=0)
    assert higgs_grid(1, 2).reshape(-1).tolist() == pytest.approx(
        [-1.5104175806045532, -0.4527800381183624, 0.4527800381183624, 1.5104175806045532], abs=0)
    assert higgs_grid(1, 4)[15].item() == pytest.approx(2.7325894832611084, abs=0)
    g3 = higgs_grid(1, 3).reshape(-1)
    assert torch.equal(g3, -g3.flip(0)) and g3[7].item() == pytest.approx(2.1519455909729004, abs=0)
    with pytest.raises(ir.SpecError, match=r"supported \(p, bits\)"):
        higgs_grid(3, 2)


def test_hadamard_orthonormal():
    H = hadamard_matrix(1024, normalized=True, dtype=torch.float64)
    assert torch.allclose(H @ H.T, torch.eye(1024, dtype=torch.float64), atol=1e-12)
    assert torch.equal(H, H.T)
    x = torch.randn(3, 2048, dtype=torch.float64)
    assert torch.allclose(block_hadamard(block_hadamard(x, 1024), 1024), x, atol=1e-12)


def ref_fwht(x):
    """Fast Walsh-Hadamard butterfly in natural (Sylvester) order, unnormalized, on the last dim, as
    fast_hadamard_transform.hadamard_transform(x, scale=1) computes it."""
    x = x.clone()
    h, n = 1, x.shape[-1]
    while h < n:
        y = x.view(*x.shape[:-1], n // (2 * h), 2, h)
        a, b = y[..., 0, :].clone(), y[..., 1, :].clone()
        y[..., 0, :], y[..., 1, :] = a + b, a - b
        h *= 2
    return x


def ref_read_stream(words, field, count):
    """Read `count` LSB-first `field`-bit codes per row from int32 words, one bit at a time."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    out = torch.zeros(words.shape[0], count, dtype=torch.int64)
    for j in range(count):
        for b in range(field):
            pos = j * field + b
            out[:, j] |= ((w[:, pos // 32] >> (pos % 32)) & 1) << b
    return out


@pytest.mark.parametrize("p,bits", [(1, 2), (1, 3), (1, 4), (2, 2), (2, 3), (2, 4)])
def test_higgs_decode_matches_flute_tables(p, bits, gen):
    spec = ir.get_format("higgs", p=p, bits=bits, group_size=64, hadamard_size=128)
    N, K = 6, 256
    codes = torch.randint(0, 2 ** (p * bits), (N, K // p), generator=gen)
    from ir.bitpack import pack_cols
    # FLUTE (prepare_data): tables2[hi][lo] is a pair of values; p=2 splits a code into hi = c >> bits
    # (element 2j) and lo = c & mask (element 2j+1) with tables2 = grid.view(2^b, 2^b, 2); p=1 uses
    # make_qmap2_from_qmap: tables2[i][j] = (qmap[i], qmap[j]) on consecutive element pairs.
    grid16, mask = higgs_grid(p, bits).half(), 2 ** bits - 1
    t = {"codes": pack_cols(codes, p * bits, 32, straddle=bool(32 % (p * bits))),
         "scales": (torch.rand(N, K // 64, generator=gen) + 0.5).half(), "grid": grid16}
    assert torch.equal(ref_read_stream(t["codes"], p * bits, K // p), codes)
    if p == 2:
        tables2 = grid16.view(2 ** bits, 2 ** bits, 2)
        hi, lo = codes >> bits, codes & mask
    else:
        q = grid16.reshape(-1)
        tables2 = torch.stack(torch.meshgrid(q, q, indexing="ij"), dim=-1)
        hi, lo = codes[:, 0::2], codes[:, 1::2]
    w_hat = (tables2[hi, lo].reshape(N, K) * t["scales"].repeat_interleave(64, dim=1))
    assert torch.equal(decode_higgs_rotated(spec, t, N, K), w_hat)
    # HiggsLinear: y = W_hat . hadamard_transform(x, scale=1/sqrt(128)) per 128-block
    x = torch.randn(3, K, generator=gen, dtype=torch.float64)
    y_ref = (ref_fwht(x.view(3, 2, 128)) / math.sqrt(128)).view(3, K) @ w_hat.double().T
    W = ir.dequantize(ir.QuantizedTensor(spec, (N, K), t))
    assert torch.allclose(x @ W.double().T, y_ref, rtol=1e-6, atol=1e-6)


def test_higgs_encoder_matches_quantize_with_higgs(gen):
    # With group_size == hadamard_size our per-group RMS is HIGGS's ||block|| / sqrt(hadamard_size),
    # and the codes are argmax(2<w, g> - |g|^2) of FHT(w) / ||w||. Ours divides by the fp16-rounded
    # scale, so a code on a decision boundary may differ: allow 0.5 %.
    spec = ir.get_format("higgs", p=2, bits=3, group_size=256, hadamard_size=256)
    W = torch.randn(16, 512, generator=gen)
    qt = ir.quantize(spec, W)
    blocks = W.view(16, 2, 256)
    s = blocks.norm(dim=-1)
    rot = ref_fwht(blocks) / s[..., None]
    grid = higgs_grid(2, 3)
    ref_codes = torch.argmax(2 * rot.reshape(16, 2, -1, 2) @ grid.T - grid.pow(2).sum(-1), dim=-1).reshape(16, -1)
    ref_scales = (s / math.sqrt(256)).half()
    assert torch.allclose(qt.tensors["scales"].float(), ref_scales.float(), rtol=1e-3)
    codes = ref_read_stream(qt.tensors["codes"], 6, 256)
    assert (codes == ref_codes).float().mean() > 0.995


@pytest.mark.parametrize("p,bits", [(1, 2), (1, 3), (1, 4), (2, 2), (2, 3), (2, 4)])
def test_higgs_round_trip_bounds(p, bits, gen):
    # The rotation keeps Gaussian data Gaussian and the group scale is its RMS, so rel^2 is the grid's
    # Gaussian MSE: at most Lloyd-Max's at that rate (+3 % for the RMS estimate on 256 samples),
    # and p=2 grids are lower still; Shannon: rel >= 2**-bits.
    W = torch.randn(64, 1024, generator=gen)
    qt = ir.quantize(ir.get_format(f"higgs_p{p}_b{bits}"), W)
    err = rel_err(W, ir.dequantize(qt))
    assert 2.0 ** -bits < err < 1.03 * math.sqrt(LLOYD_MAX_MSE[bits])
    # re-encoding: with the stored scales, the nearest grid points of the decoded rotated weights are
    # the stored codes (a refit of the scales from decoded weights changes them, so codes may move)
    w_hat = decode_higgs_rotated(qt.spec, qt.tensors, 64, 1024).float()
    x = (w_hat / qt.tensors["scales"].float().repeat_interleave(256, dim=1)).reshape(-1, p)
    codes = nearest_codeword(x, higgs_grid(p, bits).half()).reshape(64, -1)
    assert torch.equal(codes, ref_read_stream(qt.tensors["codes"], p * bits, 1024 // p))


def test_higgs_p2_beats_p1():
    W = torch.randn(16, 1024, generator=torch.Generator().manual_seed(1))
    for bits in (2, 3, 4):
        e1, e2 = (rel_err(W, ir.dequantize(ir.quantize(ir.get_format(f"higgs_p{p}_b{bits}"), W))) for p in (1, 2))
        assert e2 < e1


def test_higgs_effective_weight_and_decode_deterministic(gen):
    spec = ir.get_format("higgs_p2_b4")
    W = torch.randn(8, 2048, generator=gen)
    qt = ir.quantize(spec, W)
    Wq = ir.dequantize(qt)
    assert torch.equal(Wq, ir.dequantize(qt))
    # W = W_hat @ H: rotating back recovers W_hat
    w_hat = decode_higgs_rotated(spec, qt.tensors, 8, 2048).float()
    assert torch.allclose(block_hadamard(Wq, 1024), w_hat, atol=1e-5)


@pytest.mark.parametrize("opts,match", [
    (dict(p=3), "p = 3"), (dict(bits=5), "bits = 5"), (dict(bits=1), "bits = 1"),
    (dict(group_size=32), "group_size = 32"), (dict(hadamard_size=1000), "hadamard_size = 1000"),
    (dict(group_size=128, hadamard_size=64), "hadamard_size = 64"),
])
def test_higgs_rejects_invalid_options(opts, match):
    with pytest.raises(ir.SpecError, match=match):
        ir.get_format("higgs", **opts)


def test_higgs_rejects_bad_shapes():
    with pytest.raises(ir.SpecError, match="not a multiple of 1024"):
        ir.quantize(ir.get_format("higgs_p2_b4"), torch.randn(4, 1536))
    with pytest.raises(ir.SpecError, match="no calibration"):
        ir.quantize(ir.get_format("higgs_p2_b4"), torch.randn(4, 1024), seed=1)


# --------------------------------------------------------------------------------------------------
# codebook helpers
# --------------------------------------------------------------------------------------------------
def test_kmeans_fewer_vectors_than_centroids(gen):
    X = torch.randn(10, 3, generator=gen)
    C, assign = kmeans(X, 16, iters=5, generator=gen)
    assert C.shape == (16, 3)
    assert torch.equal(C[assign], X)                      # each vector is its own centroid
    assert torch.equal(C[10:], C[:6])                     # padded with copies, cyclically


def test_kmeans_weights_pull_centroid(gen):
    X = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    C, _ = kmeans(X, 2, iters=10, generator=gen, weights=torch.tensor([1.0, 3.0, 1.0, 1.0]))
    assert sorted(C.reshape(-1).tolist()) == pytest.approx([0.75, 10.5])


def test_two_level_search_recall(gen):
    # k = 16384 > EXACT_SEARCH_MAX: 64 coarse cells, 32 probed. Stated in nearest_codeword's note:
    # most answers exact, the rest near-nearest (mean squared distance within a few %).
    X = torch.randn(1024, 8, generator=gen)
    C = torch.randn(16384, 8, generator=gen)
    approx, exact = nearest_codeword(X, C), nearest_codeword_exact(X, C)
    assert (approx == exact).float().mean() > 0.9
    assert (X - C[approx]).pow(2).sum(1).mean() < 1.03 * (X - C[exact]).pow(2).sum(1).mean()
    assert torch.equal(nearest_codeword(C[:500], C), torch.arange(500))  # a codeword finds itself
