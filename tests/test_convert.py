"""ir.convert: exact repacking between formats that store the same numbers (AutoAWQ -> GPTQ v2, GGUF Q4_0 / Q8_0 ->
GPTQ v2 int4 / int8 group 32 with float32 dequant)."""
import pytest
import torch

import ir
from ir import SpecError
from ir.convert import convert, repack_target
from ir.synthetic import synthetic_quantized


@pytest.mark.parametrize("group_size,shape", [(128, (256, 512)), (64, (72, 256)), (32, (64, 128)), (-1, (128, 256))])
def test_awq_repacks_into_gptq_v2_bit_exactly(group_size, shape):
    spec = ir.get_format("awq", group_size=group_size)
    qt = synthetic_quantized(spec, *shape)
    target = repack_target(spec)
    assert target.family == "gptq" and target.param("checkpoint") == "v2" and target.param("group_size") == group_size
    assert target.name == ("int4_g128_asym" if group_size == 128 else "gptq")  # the tuned preset where there is one
    out = convert(qt, target)
    assert out.spec == target and out.shape == qt.shape
    assert torch.equal(ir.dequantize(out), ir.dequantize(qt))


def test_repacked_awq_runs_on_the_gptq_kernel():
    """The repacked weight through its own generated kernel (interpreter) equals the AWQ reference product."""
    from runtime.kernels import get_kernel
    from ir import KernelConfig
    spec = ir.get_format("awq")
    qt = synthetic_quantized(spec, 128, 256)
    out = convert(qt, "int4_g128_asym")
    mod = get_kernel(out.spec, 1, 128, 256, "sm90", KernelConfig.from_label("m1n64k128s2w2p2"))
    device = "cuda" if torch.cuda.is_available() else "cpu"   # natively on a GPU, under the interpreter on the CPU
    x = torch.randn(1, 256).half()
    y = mod.run(x.to(device), {k: v.to(device) for k, v in out.tensors.items()}, 128).float().cpu()
    ref = x.float() @ ir.dequantize(qt).float().T
    assert ((y - ref).norm() / ref.norm()).item() < 2e-3


def test_convert_refuses_formats_that_store_other_numbers():
    qt = synthetic_quantized(ir.get_format("awq"), 64, 256)
    with pytest.raises(SpecError, match="sym"):
        convert(qt, "int4_g128_sym")
    with pytest.raises(SpecError, match="group_size"):
        convert(qt, "int2_g64_asym")   # another width and group: the message lists what differs
    with pytest.raises(SpecError, match="no exact conversion from the gptq family"):
        convert(synthetic_quantized(ir.get_format("int4_g128_asym"), 64, 256), "awq")
    assert repack_target(ir.get_format("int4_g128_asym")) is None and repack_target(ir.get_format("bnb_nf4")) is None


@pytest.mark.parametrize("shape", [(64, 256), (8, 32)])
@pytest.mark.parametrize("src,name,bits", [("gguf_q4_0", "int4_g32_sym_f32", 4), ("gguf_q8_0", "int8_g32_sym_f32", 8)])
def test_gguf_q4_0_and_q8_0_repack_into_gptq_float32_bit_exactly(src, name, bits, shape):
    """Q4_0's blocks (codes of 32 weights, zero 8, fp16 d, fp32 dequant) as GPTQ v2 int4 group 32, Q8_0's (int8 codes,
    fp16 d) as GPTQ v2 int8 group 32 with zero points 128, both with compute_dtype float32: the same dequantized
    weight bit for bit, from the encoder and from random blocks (every fp16 d, negative and subnormal ones included,
    and every code); an out_features the target cannot pack is refused."""
    spec = ir.get_format(src)
    target = repack_target(spec)
    assert (target.name, target.family, target.param("bits"), target.param("group_size"), target.param("checkpoint"),
            target.decode.param("compute_dtype")) == (name, "gptq", bits, 32, "v2", "float32")
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(3)) * 0.05
    for qt in (ir.quantize(spec, W), synthetic_quantized(spec, *shape)):
        out = convert(qt, target)
        assert out.spec == target and out.shape == qt.shape
        a, b = ir.dequantize(out), ir.dequantize(qt)
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    with pytest.raises(SpecError, match=f"multiple of {32 // bits}"):
        convert(synthetic_quantized(spec, 6 if bits == 8 else 12, 32), target)


def test_gguf_q4_0_conversion_refusals():
    qt = synthetic_quantized(ir.get_format("gguf_q4_0"), 64, 256)
    with pytest.raises(SpecError, match="compute_dtype 'float32'"):
        convert(qt, ir.get_format("gptq", bits=4, group_size=32, sym=True, checkpoint="v2"))   # fp16 dequant
    with pytest.raises(SpecError, match="group_size"):
        convert(qt, "int4_g128_sym")
    with pytest.raises(SpecError, match="with {'bits': 8,.*to hold a Q8_0 weight exactly"):
        convert(synthetic_quantized(ir.get_format("gguf_q8_0"), 64, 256), repack_target(qt.spec))
    with pytest.raises(SpecError, match="only GGUF Q4_0 and Q8_0"):
        convert(synthetic_quantized(ir.get_format("gguf_q4_k"), 8, 256), repack_target(qt.spec))
    with pytest.raises(SpecError, match="multiple of 8"):
        convert(synthetic_quantized(ir.get_format("gguf_q4_0"), 12, 64), repack_target(qt.spec))
    with pytest.raises(SpecError, match="compute_dtype = 'bfloat16' is invalid"):
        ir.get_format("gptq", compute_dtype="bfloat16")
    assert repack_target(ir.get_format("gguf_q4_k")) is None
