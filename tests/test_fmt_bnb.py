"""bnb_nf4 / bnb_fp4: IR description, round trip, rejection, and bit-exactness against bitsandbytes.

bitsandbytes (the origin, 0.50.2) runs here on its CPU backend: quantize_4bit is its pure-torch
default kernel, the nested 8-bit absmax quantization and dequantize_4bit are its native C kernels
(the torch kernel for dequantize when blocksize >= 2048 on AVX512)."""
import pytest
import torch

import ir
from ir import QuantizedTensor, SpecError
from ir.formats.bnb import FP4_TABLE, NF4_TABLE, dynamic_map_signed

FORMATS = ("bnb_nf4", "bnb_fp4")
DQ = (False, True)


def _bnb():
    return pytest.importorskip("bitsandbytes.functional")


def _codes(packed):
    """Independent transcription of bitsandbytes' unpack (backends/default/ops.py):
    out[::2] = A >> 4; out[1::2] = A & 0xF."""
    A = packed.reshape(-1).to(torch.int64)
    out = torch.empty(2 * A.numel(), dtype=torch.int64)
    out[::2] = A >> 4
    out[1::2] = A & 0xF
    return out


def _true_absmax(W, blocksize):
    return W.float().reshape(-1, blocksize).abs().amax(dim=1)


# -- the IR description ------------------------------------------------------------------------------
@pytest.mark.parametrize("dq", DQ)
def test_schema_matches_bitsandbytes_state_dict(dq):
    spec = ir.get_format("bnb_nf4", blocksize=64, double_quant=dq)
    sch = spec.tensor_schema(72, 256)   # 288 blocks of 64: one full nested block of 256 and a tail of 32
    assert sch["weight"] == ((72 * 256 // 2, 1), "uint8")
    assert sch["quant_map"] == ((16,), "float32")
    if dq:
        assert sch["absmax"] == ((288,), "uint8")
        assert sch["nested_absmax"] == ((2,), "float32")
        assert sch["nested_quant_map"] == ((256,), "float32")
        assert sch["nested_offset"] == ((), "float32")
        # codes + uint8 absmax + fp32 nested absmax per 256 blocks + maps + offset
        assert spec.bits_per_weight(4096, 4096) == pytest.approx(
            4 + 8 / 64 + 32 / (64 * 256) + 8 * (4 * 16 + 4 * 256 + 4) / 4096 ** 2)
    else:
        assert sch["absmax"] == ((288,), "float32")
        assert set(sch) == {"weight", "absmax", "quant_map"}
        assert spec.bits_per_weight(4096, 4096) == pytest.approx(4 + 32 / 64 + 8 * 64 / 4096 ** 2)


@pytest.mark.parametrize("name", FORMATS)
def test_ir_fields(name):
    bnb = _bnb()
    spec = ir.get_format(name, blocksize=128)
    qt = name.split("_")[1]
    assert spec.decode.kind == "lut" and spec.decode.bits == 4
    assert torch.equal(torch.tensor(spec.decode.table), bnb.get_4bit_type(qt, device="cpu"))
    assert spec.packing.order == "msb" and spec.packing.field_bits == 4 and spec.packing.fields_per_word == 2
    assert spec.k_multiple == 128 and spec.n_multiple == 1
    (absmax,) = spec.scales
    assert (absmax.name, absmax.granularity, absmax.size, absmax.op, absmax.dtype, absmax.bits) == \
        ("absmax", "block", 128, "mul", "uint8", 8)
    nested = absmax.quantized_by
    assert (nested.name, nested.granularity, nested.size, nested.op, nested.dtype) == \
        ("nested_absmax", "block", 256, "lut_affine", "float32")
    plain = ir.get_format(name, blocksize=128, double_quant=False)
    assert plain.scales[0].quantized_by is None and plain.scales[0].dtype == "float32"


def test_tables_and_dynamic_map_equal_the_origin():
    bnb = _bnb()
    assert torch.equal(torch.tensor(NF4_TABLE), bnb.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(torch.tensor(FP4_TABLE), bnb.get_4bit_type("fp4", device="cpu"))
    assert torch.equal(dynamic_map_signed(), bnb.create_dynamic_map(signed=True))


# -- round trip, re-encoding, determinism -------------------------------------------------------------
@pytest.mark.parametrize("dq", DQ)
@pytest.mark.parametrize("name", FORMATS)
def test_round_trip_error_bound(name, dq, gen):
    spec = ir.get_format(name, blocksize=64, double_quant=dq)
    W = torch.randn(64, 512, generator=gen)
    qt = ir.quantize(spec, W)
    Wq = ir.dequantize(qt)
    table = torch.tensor(spec.decode.table).sort().values
    half_gap = (table[1:] - table[:-1]).max() / 2          # NF4: (1 - 0.72296)/2, FP4: (1 - 2/3)/2
    a = _true_absmax(W, 64)
    # Codes are chosen with the exact block absmax a: |w - t[q]*a| <= a * half_gap. The decoder uses
    # a_hat (a itself without double quant); since |t[q]| <= 1, |w - t[q]*a_hat| <= a*half_gap + |a - a_hat|.
    a_hat = Wq.reshape(-1, 64).abs().amax(dim=1)           # the +-1 code is always used in a block
    if dq:
        # |a - a_hat| is the nested 8-bit error: <= (largest dynamic-map gap / 2) * nested absmax of the
        # 256-block, the gap 0.9/64 also covering the end gap from -0.99297 to -1.
        dyn = dynamic_map_signed()
        assert (dyn[1:] - dyn[:-1]).max() <= 0.9 / 64 + 1e-7
        nested = qt.tensors["nested_absmax"].repeat_interleave(256)[: a.numel()]
        assert ((a - a_hat).abs() <= nested * 0.9 / 128 * (1 + 1e-5)).all()
    else:
        assert torch.equal(a_hat, a)
    bound = a * half_gap + (a - a_hat).abs()
    err = (W - Wq).reshape(-1, 64).abs()
    assert (err <= bound.view(-1, 1) * (1 + 1e-5) + 1e-7).all()
    assert (W - Wq).norm() / W.norm() < (0.11 if "nf4" in name else 0.15)


@pytest.mark.parametrize("dq", DQ)
@pytest.mark.parametrize("name", FORMATS)
def test_reencoding_decoded_weights_reproduces_codes(name, dq, gen):
    spec = ir.get_format(name, blocksize=32, double_quant=dq)
    W = torch.randn(16, 256, generator=gen)
    qt = ir.quantize(spec, W)
    Wq = ir.dequantize(qt)
    qt2 = ir.quantize(spec, Wq)
    c1, c2 = _codes(qt.tensors["weight"]), _codes(qt2.tensors["weight"])
    if name == "bnb_fp4":
        # FP4 has two zero codes: 8 (given to tiny positive x) decodes to 0, which re-encodes as 0.
        c1 = torch.where(c1 == 8, 0, c1)
    assert torch.equal(c1, c2)
    if not dq:   # with double quant the re-encoded absmax codes need not match: the offset mean(a_hat) moves
        assert torch.equal(qt2.tensors["absmax"], qt.tensors["absmax"])
        assert torch.equal(ir.dequantize(qt2), Wq)


@pytest.mark.parametrize("name", FORMATS)
def test_encode_decode_deterministic(name, gen):
    spec = ir.get_format(name)
    W = torch.randn(8, 128, generator=gen)
    a, b = ir.quantize(spec, W), ir.quantize(spec, W.clone())
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert torch.equal(ir.dequantize(a), ir.dequantize(b))


def test_all_zero_block_decodes_to_zero():
    W = torch.zeros(2, 128)
    W[1, 64:] = torch.linspace(-1, 1, 64)
    for name in FORMATS:
        for dq in DQ:
            Wq = ir.dequantize(ir.quantize(ir.get_format(name, double_quant=dq), W))
            assert torch.equal(Wq[0], torch.zeros(128)) and torch.equal(Wq[1, :64], torch.zeros(64))


# -- JSON and keys ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dq", DQ)
@pytest.mark.parametrize("name", FORMATS)
def test_json_round_trip_and_keys(name, dq):
    spec = ir.get_format(name, blocksize=256, double_quant=dq)
    back = ir.FormatSpec.from_json(spec.to_json())
    assert back == spec and back.key == spec.key
    assert ir.get_format(name, blocksize=256, double_quant=dq).key == spec.key
    other = FORMATS[1 - FORMATS.index(name)]
    others = [ir.get_format(name, blocksize=128, double_quant=dq),
              ir.get_format(name, blocksize=256, double_quant=not dq),
              ir.get_format(other, blocksize=256, double_quant=dq)]
    assert len({spec.key, *(o.key for o in others)}) == 4


def test_defaults_follow_params4bit():
    assert ir.format_options("bnb_nf4") == {"blocksize": 64, "double_quant": True, "quant_storage": "uint8"}
    assert ir.get_format("bnb_fp4") == ir.get_format("bnb_fp4", blocksize=64, double_quant=True)


# -- rejection ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("opts, match", [
    (dict(blocksize=48), r"blocksize = 48 is invalid; expected one of \[32, 64, 128, 256, 512, 1024, 2048, 4096\]"),
    (dict(blocksize=8192), r"blocksize = 8192"),
    (dict(blocksize=True), r"blocksize = True"),
    (dict(double_quant="yes"), r"double_quant = 'yes' is invalid; expected True or False"),
    (dict(quant_storage="bfloat16"), r"quant_storage = 'bfloat16' is invalid; expected one of \['uint8'\]"),
    (dict(compress_statistics=True), r"unknown options \['compress_statistics'\]"),
])
@pytest.mark.parametrize("name", FORMATS)
def test_rejects_invalid_options(name, opts, match):
    with pytest.raises(SpecError, match=match):
        ir.get_format(name, **opts)


def test_rejects_invalid_shapes_and_tensors(gen):
    spec = ir.get_format("bnb_nf4", blocksize=64)
    with pytest.raises(SpecError, match=r"K = 96 .* not a multiple of 64 \(bnb blocks of 64 flattened"):
        ir.quantize(spec, torch.randn(4, 96, generator=gen))
    with pytest.raises(SpecError, match=r"dtype torch.int32"):
        ir.quantize(spec, torch.zeros(4, 64, dtype=torch.int32))
    good = ir.quantize(spec, torch.randn(4, 64, generator=gen)).tensors
    with pytest.raises(SpecError, match=r"'absmax' has shape \(4,\) dtype torch.float32; expected .* torch.uint8"):
        QuantizedTensor(spec, (4, 64), {**good, "absmax": good["absmax"].float()})
    with pytest.raises(SpecError, match=r"'weight' has shape \(128,\)"):
        QuantizedTensor(spec, (4, 64), {**good, "weight": good["weight"].view(-1)})
    with pytest.raises(SpecError, match=r"missing \['nested_offset'\]"):
        QuantizedTensor(spec, (4, 64), {k: v for k, v in good.items() if k != "nested_offset"})
    with pytest.raises(SpecError, match=r"is not the fp4 table .* wrong quant_type"):
        ir.dequantize(QuantizedTensor(ir.get_format("bnb_fp4"), (4, 64), good))
    with pytest.raises(SpecError, match=r"no calibration data"):
        ir.get_codec(spec).quantize(spec, torch.randn(4, 64, generator=gen), act_absmax=torch.ones(64))


# -- byte layout and bit-exactness against the origin --------------------------------------------------
def test_byte_layout_by_hand():
    """A block whose values sit exactly on NF4 entries: byte j = code[2j] << 4 | code[2j+1]."""
    spec = ir.get_format("bnb_nf4", blocksize=32, double_quant=False)
    codes = torch.tensor([15, 0, 7, 8, 3, 12, 1, 14] * 4)
    W = (torch.tensor(NF4_TABLE)[codes] * 2.5).view(1, 32)
    t = ir.quantize(spec, W).tensors
    assert t["weight"][:4, 0].tolist() == [0xF0, 0x78, 0x3C, 0x1E]
    assert torch.equal(_codes(t["weight"]), codes)
    assert t["absmax"].tolist() == [2.5]
    # The origin's decode, transcribed: w[i] = code[q[i]] * absmax[i // blocksize].
    assert torch.equal(ir.dequantize(ir.quantize(spec, W)), W)


def _bnb_state_tensors(q, st, dq):
    d = {"weight": q, "absmax": st.absmax, "quant_map": st.code}
    if dq:
        d.update(nested_absmax=st.state2.absmax, nested_quant_map=st.state2.code, nested_offset=st.offset)
    return d


def _nearest_idx_in_default_backend(x, code):
    """bitsandbytes' default (torch) quantize_blockwise kernel, called past its native CPU override."""
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return op.redispatch(keys, x, code, 256)


# (blocksize, N, K): 576 blocks = 2 nested blocks + a tail of 64; 256 blocks; 4 blocks of 1024.
CASES = [(32, 72, 256), (64, 16, 256), (1024, 2, 2048)]


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=("f32", "f16", "bf16"))
@pytest.mark.parametrize("blocksize, N, K", CASES)
@pytest.mark.parametrize("dq", DQ, ids=("plain", "dq"))
@pytest.mark.parametrize("name", FORMATS)
def test_bit_exact_against_bitsandbytes(name, dq, blocksize, N, K, dtype, gen):
    bnb = _bnb()
    quant_type = name.split("_")[1]
    spec = ir.get_format(name, blocksize=blocksize, double_quant=dq)
    W = (torch.randn(N, K, generator=gen) * 0.02).to(dtype)
    W.view(-1)[::97] = 0                                      # exact zeros (the FP4 +-0 code choice)
    ours = ir.quantize(spec, W).tensors
    q, st = bnb.quantize_4bit(W, blocksize=blocksize, compress_statistics=dq, quant_type=quant_type)

    # Encoder: packed bytes, fp32 absmax (or its nested parts) and maps equal the origin's.
    assert torch.equal(ours["weight"], q)
    assert torch.equal(ours["quant_map"], st.code)
    if not dq:
        assert torch.equal(ours["absmax"], st.absmax)
    else:
        assert torch.equal(ours["nested_offset"], st.offset)
        assert torch.equal(ours["nested_absmax"], st.state2.absmax)
        assert torch.equal(ours["nested_quant_map"], st.state2.code)
        assert st.state2.blocksize == spec.param("nested_blocksize")
        assert str(st.state2.dtype).removeprefix("torch.") == spec.param("nested_dtype")
        # Nested codes: equal to the origin's default (nearest-entry) kernel; its native CPU kernel rounds
        # through 65536 bins first, so where they differ ours must be at least as near.
        absmax_c = _true_absmax(W, blocksize) - st.offset
        want, want_absmax = _nearest_idx_in_default_backend(absmax_c, st.state2.code)
        assert torch.equal(ours["absmax"], want) and torch.equal(want_absmax, st.state2.absmax)
        scale = st.state2.absmax.repeat_interleave(256)[: absmax_c.numel()]
        dyn = st.state2.code
        err_ours = (dyn[ours["absmax"].long()] - absmax_c / scale).abs()
        err_theirs = (dyn[st.absmax.long()] - absmax_c / scale).abs()
        assert (err_ours <= err_theirs).all()

    # Decoder: ours on the origin's tensors equals dequantize_4bit (computed in fp32, rounded once
    # to the weight dtype), and the origin decodes our tensors to our values.
    ref = bnb.dequantize_4bit(q, st)
    assert ref.dtype == dtype
    mine = ir.dequantize(QuantizedTensor(spec, (N, K), _bnb_state_tensors(q, st, dq)))
    assert torch.equal(mine.to(dtype), ref)
    state2 = bnb.QuantState(absmax=ours["nested_absmax"], code=ours["nested_quant_map"], blocksize=256,
                            dtype=torch.float32) if dq else None
    st_ours = bnb.QuantState(absmax=ours["absmax"], shape=torch.Size([N, K]), code=ours["quant_map"],
                             blocksize=blocksize, quant_type=quant_type, dtype=dtype,
                             offset=ours["nested_offset"] if dq else None, state2=state2)
    assert torch.equal(bnb.dequantize_4bit(ours["weight"], st_ours), ir.dequantize(ir.quantize(spec, W)).to(dtype))


@pytest.mark.parametrize("dq", DQ, ids=("plain", "dq"))
@pytest.mark.parametrize("name", FORMATS)
def test_encoder_bit_exact_at_blocksize_4096(name, dq, gen):
    """The largest blocksize, encoder side only (bitsandbytes' CPU dequantize of blocksize >= 2048 goes
    through a torch.compile'd kernel that costs seconds to build; the decode math is the same as above)."""
    bnb = _bnb()
    W = torch.randn(3, 4096, generator=gen).to(torch.float16)
    ours = ir.quantize(ir.get_format(name, blocksize=4096, double_quant=dq), W).tensors
    q, st = bnb.quantize_4bit(W, blocksize=4096, compress_statistics=dq, quant_type=name.split("_")[1])
    assert torch.equal(ours["weight"], q)
    if dq:   # 3 blocks: the nested quantization is one short block
        want, _ = _nearest_idx_in_default_backend(_true_absmax(W, 4096) - st.offset, st.state2.code)
        assert torch.equal(ours["absmax"], want) and torch.equal(ours["nested_absmax"], st.state2.absmax)
        assert torch.equal(ours["nested_offset"], st.offset)
    else:
        assert torch.equal(ours["absmax"], st.absmax)


def test_state_dict_round_trip_through_bitsandbytes(gen):
    """The packed safetensors state of Params4bit maps key for key onto our tensors."""
    bnb = _bnb()
    spec = ir.get_format("bnb_nf4")
    W = torch.randn(8, 128, generator=gen)
    q, st = bnb.quantize_4bit(W, blocksize=64, compress_statistics=True, quant_type="nf4")
    packed = st.as_dict(packed=True)
    stored = {t.name for t in spec.tensors} - {"weight", "nested_offset"}   # nested_offset is in the JSON blob
    assert {k for k in packed if not k.startswith("quant_state.")} == stored
    back = bnb.QuantState.from_dict(dict(packed), device=torch.device("cpu"))
    tensors = _bnb_state_tensors(q, back, True)
    assert tensors["nested_offset"].shape == () and tensors["nested_offset"].dtype == torch.float32
    assert torch.equal(ir.dequantize(QuantizedTensor(spec, (8, 128), tensors)), bnb.dequantize_4bit(q, st))
    assert torch.equal(tensors["nested_offset"], st.offset)   # the float survives the JSON blob exactly
