"""ir.convert: exact repacking between formats that store the same numbers (AutoAWQ -> GPTQ v2)."""
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
    x = torch.randn(1, 256).half()
    y = mod.run(x, dict(out.tensors), 128).float()
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
