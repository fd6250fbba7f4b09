"""The IR core: validation, JSON round trip, keys, registry errors, bit packing, Hadamard."""
import json

import pytest
import torch

import ir
from ir import ActQuant, Decode, FormatSpec, KernelConfig, Packing, ScaleLevel, SpecError, TensorField, Transform
from ir.bitpack import pack_cols, pack_rows, unpack_cols, unpack_rows
from ir.hadamard import block_hadamard, hadamard_matrix


def _spec(**over):
    base = dict(
        name="toy", family="toy",
        packing=Packing(layout="toy", word_dtype="int32", field_bits=4),
        decode=Decode(kind="affine", bits=4),
        tensors=(TensorField("qweight", "int32", ("K//8", "N"), "codes"),
                 TensorField("scales", "float16", ("K//group_size", "N"), "scales")),
        scales=(ScaleLevel("scales", "group", "float16", op="mul", axis="K", size=32,
                           bits=8, quantized_by=ScaleLevel("super", "row", "float32")),),
        params=(("group_size", 32), ("bits", 4)),
        k_multiple=32,
    )
    base.update(over)
    return FormatSpec(**base)


def test_json_round_trip_and_key_with_nested_scales():
    s = _spec()
    back = FormatSpec.from_json(s.to_json())
    assert back == s and back.key == s.key
    assert back.scales[0].quantized_by.granularity == "row"
    assert s.scales[0].depth() == 2
    assert _spec().key == s.key                      # stable across constructions
    assert _spec(params=(("group_size", 64), ("bits", 4))).key != s.key


def test_params_are_order_independent():
    assert _spec(params=(("bits", 4), ("group_size", 32))).key == _spec().key


def test_tensor_schema_and_bits():
    s = _spec()
    assert s.tensor_schema(16, 64) == {"qweight": ((8, 16), "int32"), "scales": ((2, 16), "float16")}
    assert s.bits_per_weight(64, 64) == pytest.approx(4 + 16 / 32)


@pytest.mark.parametrize("over, match", [
    (dict(decode=None), "decode"),
    (dict(name=""), "name"),
])
def test_invalid_spec_fields(over, match):
    with pytest.raises((SpecError, TypeError, AttributeError)):
        _spec(**over)


@pytest.mark.parametrize("make, match", [
    (lambda: Decode(kind="magic", bits=4), r"Decode.kind = 'magic'.*one of"),
    (lambda: Decode(kind="affine", bits=0), r"Decode.bits = 0.*positive int"),
    (lambda: Decode(kind="lut", bits=4, table=(0.0, 1.0)), r"16 entries"),
    (lambda: Packing(layout="x", word_dtype="int33", field_bits=4), r"word_dtype = 'int33'"),
    (lambda: ScaleLevel("s", "group", "float16", size=0), r"size = 0.*positive group size"),
    (lambda: ScaleLevel("s", "row", "float16", quantized_by=ScaleLevel("t", "tensor", "float32")), r"bits"),
    (lambda: Transform(kind="hadamard", size=12), r"power of two"),
    (lambda: Transform(kind="signs"), r"tensor"),
    (lambda: ActQuant(bits=3), r"ActQuant.bits = 3"),
    (lambda: TensorField("q w", "int32", ("K",), "codes"), r"identifier"),
    (lambda: KernelConfig(block_n=48), r"block_n = 48.*power of two"),
])
def test_invalid_components_name_field_and_valid_choices(make, match):
    with pytest.raises(SpecError, match=match):
        make()


def test_spec_cross_checks():
    with pytest.raises(SpecError, match="unique tensor names"):
        _spec(tensors=(TensorField("a", "int32", ("K",), "codes"), TensorField("a", "int32", ("K",), "codes")))
    with pytest.raises(SpecError, match="stored tensor name"):
        _spec(transforms=(Transform(kind="signs", tensor="SU"),))


def test_shape_checks_name_the_dimension():
    s = _spec()
    with pytest.raises(SpecError, match=r"K = 40 .* multiple of 32"):
        s.check_shape(16, 40)
    with pytest.raises(SpecError, match=r"N = 0"):
        s.check_shape(0, 64)


def test_from_json_errors():
    with pytest.raises(SpecError, match="malformed"):
        FormatSpec.from_json("{not json")
    d = json.loads(_spec().to_json())
    d["bogus"] = 1
    with pytest.raises(SpecError, match="unknown fields"):
        FormatSpec.from_dict(d)


def test_registry_errors():
    with pytest.raises(SpecError, match="unknown format 'nope'"):
        ir.get_format("nope")
    name = ir.list_formats()[0]
    with pytest.raises(SpecError, match="unknown options"):
        ir.get_format(name, definitely_not_an_option=1)


def test_every_format_builds_round_trips_and_reports_bits():
    for name in ir.list_formats():
        spec = ir.get_format(name)
        assert FormatSpec.from_json(spec.to_json()) == spec, name
        assert ir.get_format(name).key == spec.key, name
        assert 0.5 < spec.bits_per_weight(4096, 4096) <= 16.5, name


def test_quantize_rejects_bad_weights():
    spec = ir.get_format(ir.list_formats()[0])
    with pytest.raises(SpecError, match="dtype torch.int32"):
        ir.quantize(spec, torch.zeros(4, 4, dtype=torch.int32))
    with pytest.raises(SpecError, match="2-D"):
        ir.quantize(spec, torch.zeros(4))
    with pytest.raises(SpecError, match="NaN"):
        ir.quantize(spec, torch.full((spec.n_multiple * 4, spec.k_multiple * 2), float("nan")))
    with pytest.raises(SpecError, match="torch.Tensor"):
        ir.quantize(spec, [[1.0]])


@pytest.mark.parametrize("bits, straddle, msb", [(2, False, False), (3, True, False), (3, False, False),
                                                  (4, False, True), (8, False, False)])
def test_bitpack_round_trip(bits, straddle, msb, gen):
    codes = torch.randint(0, 2 ** bits, (96, 5), generator=gen)
    w = pack_rows(codes, bits, 32, msb_first=msb, straddle=straddle)
    assert torch.equal(unpack_rows(w, bits, 96, 32, msb_first=msb, straddle=straddle), codes)
    c = codes.t().contiguous()
    assert torch.equal(unpack_cols(pack_cols(c, bits, 32, msb, straddle), bits, 96, 32, msb, straddle), c)


def test_bitpack_lsb_first_layout():
    w = pack_rows(torch.tensor([[1], [2], [3], [4], [5], [6], [7], [8]]), 4)
    assert w.item() == 0x87654321 - 2 ** 32  # first field in the lowest nibble, int32 bit pattern
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        pack_rows(torch.tensor([[16]]), 4)


def test_hadamard_is_orthonormal_and_involutive(gen):
    H = hadamard_matrix(64, dtype=torch.float64)
    assert torch.allclose(H @ H.T, torch.eye(64, dtype=torch.float64))
    x = torch.randn(3, 128, generator=gen, dtype=torch.float64)
    assert torch.allclose(block_hadamard(block_hadamard(x, 64), 64), x)
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(12)


def test_fast_walsh_hadamard_matches_the_matrix(gen):
    from ir.hadamard import fwht
    for n in (1, 2, 8, 256):
        x = torch.randn(3, 2, n, generator=gen, dtype=torch.float64)
        assert torch.allclose(fwht(x), x @ hadamard_matrix(n, normalized=False, dtype=torch.float64))
    with pytest.raises(ValueError, match="power of two"):
        fwht(torch.zeros(3, 12))


def test_magic_u2f_is_exact_and_checks_range():
    from ir.bitpack import magic_u2f
    q32 = torch.cat([torch.arange(0, 1 << 16), torch.tensor([(1 << 23) - 1])])
    assert torch.equal(magic_u2f(q32), q32.float())
    q16 = torch.arange(0, 1024)
    assert torch.equal(magic_u2f(q16, torch.float16), q16.half())
    # differences of biased values are exact: the kernels subtract (bias + zero) once per column
    z = torch.tensor(7)
    assert torch.equal(magic_u2f(q16, torch.float16) - magic_u2f(z, torch.float16), (q16 - 7).half())
    with pytest.raises(ValueError, match="q < 1024"):
        magic_u2f(torch.tensor([1024]), torch.float16)
    with pytest.raises(ValueError, match="dtype"):
        magic_u2f(q16, torch.bfloat16)


def test_params_cannot_shadow_the_shape_names():
    spec = ir.get_format("gptq")
    d = json.loads(spec.to_json())
    for name in ("N", "K"):
        with pytest.raises(ir.SpecError, match="reserved for the weight's shape"):
            ir.FormatSpec.from_dict({**d, "params": [*d["params"], [name, 7]]})


def test_shape_rules_refuse_shapes_the_layout_cannot_hold():
    spec = ir.get_format("vptq", group_size=64, outlier_size=16)
    spec.check_shape(256, 16 + 2 * 64)
    with pytest.raises(ir.SpecError, match=r"K = 200 breaks the rule .*groups of 64"):
        spec.check_shape(256, 200)
    with pytest.raises(ir.SpecError, match="must exceed outlier_size"):
        spec.check_shape(256, 16)
    d = json.loads(spec.to_json())
    with pytest.raises(ir.SpecError, match="shape_rules"):
        ir.FormatSpec.from_dict({**d, "params": [[k, v] for k, v in d["params"] if k != "shape_rules"]
                                 + [["shape_rules", [["K > 1"]]]]})


def test_kernel_config_labels_and_optional_fields():
    """Labels round-trip every field (t: swap_ab, r: maxnreg, e: evict_first); the optional fields are left out of
    to_dict() (hence of content keys and kernel sources) at their defaults; bad values name what is valid."""
    from ir import KernelConfig, SpecError
    for label in ("m16n64k128s4w4p3", "m16n64k128s4w4p3t", "m1n64k128s8w2p2r128", "m1n64k128s8w2p2r128e",
                  "m1n64k128s8w2p2e", "m16n64k128s4w4p3te"):
        c = KernelConfig.from_label(label)
        assert c.label == label and KernelConfig(**c.to_dict()) == c
    plain, hinted = KernelConfig(), KernelConfig(evict_first=True)
    assert "evict_first" not in plain.to_dict() and "maxnreg" not in plain.to_dict()
    assert hinted.to_dict()["evict_first"] is True and hinted.key != plain.key
    with pytest.raises(SpecError, match="evict_first.*True or False"):
        KernelConfig(evict_first=1)
    with pytest.raises(SpecError, match="e suffix: evict_first"):
        KernelConfig.from_label("m1n64k128s8w2p2x")
