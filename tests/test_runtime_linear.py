"""QuantLinear on the CPU: reference dispatch, shapes and dtypes, from_linear errors, the custom op under
torch.compile (fake implementation), dtype protection of the canonical tensors, and the kernel dispatch path
run through the Triton interpreter with a faked GPU (arch, machine header, tuning database)."""
import copy
import json
import logging

import pytest
import torch
from fake_gpu import HEADER
from kernel_harness import REL_TOL
from torch import nn

import ir
from codegen.triton_backend import tuned_kernel_hash
from ir import SpecError
from runtime import QuantLinear, op, tuning
from runtime.tuning import entry_key, gpu_slug


def _linear(gen, K=256, N=64, bias=True, dtype=torch.float32):
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=gen) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(N, generator=gen) * 0.1)
    return lin.to(dtype)


def _ref(q: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """x @ W^T + b in float64 from the reference decoder (activation quantization applied first)."""
    xf = x.double()
    if q.spec.act_quant is not None:
        from ir.actquant import quantize_activation_ref
        xf = quantize_activation_ref(q.spec, q.tensors, xf)
    y = xf @ q.dequantize().double().T
    return y + q.bias.double() if q.bias is not None else y


FORMATS = [("gptq", {}), ("awq", {}), ("bnb_nf4", {}), ("gguf_q4_k", {}), ("eqat_w2g128", {}),
           ("w8a8_static", {"act_absmax": 4.0})]


@pytest.mark.parametrize("name,calib", FORMATS)
def test_forward_matches_reference_on_cpu(name, calib, gen):
    lin = _linear(gen)
    q = QuantLinear.from_linear(lin, name, **calib)
    assert q.dispatch(1).kind == "reference" and q.dispatch(1).reason == "not on CUDA"
    x = torch.randn(2, 3, 256, generator=gen)
    y = q(x)
    assert y.shape == (2, 3, 64) and y.dtype == torch.float32
    assert torch.allclose(y.double(), _ref(q, x), rtol=1e-5, atol=1e-5)
    # the quantized layer approximates the float one (loose: w2 is coarse; w8a8 rounds x too)
    rel = ((y - lin(x)).norm() / lin(x).norm()).item()
    assert rel < (0.5 if "w2" in name else 0.12), f"{name}: {rel:.3f}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_keep_their_dtype(dtype, gen):
    q = QuantLinear.from_linear(_linear(gen), "gptq").to(dtype)
    x = torch.randn(5, 256, generator=gen).to(dtype)
    y = q(x)
    assert y.dtype == dtype and y.shape == (5, 64)
    assert torch.allclose(y.double(), _ref(q, x), rtol=REL_TOL[dtype], atol=REL_TOL[dtype])


def test_leading_dims_vector_and_empty(gen):
    q = QuantLinear.from_linear(_linear(gen), "gguf_q8_0")
    v = torch.randn(256, generator=gen)
    assert q(v).shape == (64,)
    assert torch.equal(q(v), q(v[None])[0])
    assert q(torch.randn(2, 0, 256)).shape == (2, 0, 64)
    with pytest.raises(ValueError, match="in_features = 256"):
        q(torch.randn(3, 128))


def test_from_linear_refuses_what_the_format_cannot_take(gen):
    with pytest.raises(SpecError, match=r"layer blk\.3\.up: gptq: K = 200 \(in_features\) is not a multiple of 128"):
        QuantLinear.from_linear(_linear(gen, K=200), "gptq", name="blk.3.up")
    with pytest.raises(SpecError, match=r"layer nn\.Linear\(256, 64\): .*dtype torch\.float64"):
        QuantLinear.from_linear(_linear(gen, dtype=torch.float64), "gptq")
    with pytest.raises(SpecError, match="expected an nn.Linear, got Conv1d"):
        QuantLinear.from_linear(nn.Conv1d(4, 4, 1), "gptq", name="conv")
    with pytest.raises(SpecError, match="meta device"):
        QuantLinear.from_linear(nn.Linear(256, 64, device="meta"), "gptq", name="m")
    with pytest.raises(SpecError, match="unknown format 'nope'"):
        QuantLinear.from_linear(_linear(gen), "nope")
    with pytest.raises(SpecError, match="tensors .* do not match the schema"):
        QuantLinear(ir.get_format("gptq"), 256, 64, {})
    with pytest.raises(SpecError, match="bias must be a float tensor of shape"):
        qt = ir.quantize(ir.get_format("gptq"), torch.randn(64, 256, generator=gen))
        QuantLinear.from_quantized(qt, bias=torch.zeros(63))


def test_dtype_casts_touch_the_bias_only(gen):
    q = QuantLinear.from_linear(_linear(gen), "bnb_nf4")
    before = {k: v.clone() for k, v in q.tensors.items()}
    x = torch.randn(4, 256, generator=gen)
    y32 = q(x)
    q.half()
    assert q.bias.dtype == torch.float16
    for k, v in q.tensors.items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    q.to(torch.float32)
    assert torch.allclose(q(x), y32, atol=2e-3)  # only the bias went through fp16


def test_state_dict_uses_canonical_names_and_round_trips(gen):
    q = QuantLinear.from_linear(_linear(gen), "gptq")
    assert set(q.state_dict()) == {"qweight", "qzeros", "scales", "bias"}
    other = QuantLinear.from_linear(_linear(gen), "gptq")
    other.load_state_dict(q.state_dict())
    x = torch.randn(3, 256, generator=gen)
    assert torch.equal(other(x), q(x))


def test_cache_dequantized_is_explicit_and_exact(gen):
    q = QuantLinear.from_linear(_linear(gen), "awq")
    x = torch.randn(7, 256, generator=gen)
    y = q(x)
    assert q._dequantized is None and "_dequantized" not in q.state_dict()
    q.cache_dequantized()
    assert q._dequantized.shape == (64, 256) and torch.equal(q(x), y)
    q.cache_dequantized(False)
    assert q._dequantized is None


def test_deepcopy_reregisters_the_spec(gen):
    q = QuantLinear.from_linear(_linear(gen), "gguf_q4_0")
    x = torch.randn(2, 256, generator=gen)
    y = q(x)

    def via_op(m):  # the path torch.compile traces: the custom op finds the spec by its registered key
        return torch.ops.quantcc.quant_linear(x, list(m.tensors.values()), m._names_arg, m.bias, m._spec_key,
                                              m.out_features)
    assert torch.equal(via_op(q), y)
    op._SPECS.pop(q.spec.key)
    with pytest.raises(SpecError, match="no format registered"):
        via_op(q)
    q2 = copy.deepcopy(q)
    assert torch.equal(via_op(q2), y) and torch.equal(q2(x), y)


def test_warmup_on_cpu_reports_the_reference_path(gen):
    q = QuantLinear.from_linear(_linear(gen), "gptq")
    ds = q.warmup(batches=(1, 300), dtype=torch.float32)
    assert [(d.kind, d.bucket) for d in ds] == [("reference", 1), ("reference", 512)]


# -- torch.compile: the op's fake implementation ----------------------------------------------------------
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph_cpu(backend, gen):
    torch._dynamo.reset()
    q = QuantLinear.from_linear(_linear(gen), "gptq")
    c = torch.compile(q, fullgraph=True, backend=backend, dynamic=True)
    for M in (1, 5, 9):
        x = torch.randn(M, 256, generator=gen)
        assert torch.equal(c(x), q(x))
    q.cache_dequantized()  # the cached path traces too
    torch._dynamo.reset()
    c = torch.compile(q, fullgraph=True, backend=backend)
    x = torch.randn(3, 256, generator=gen)
    assert torch.equal(c(x), q(x))


def test_compile_cpu_model(gen):
    """A small stack with pointwise ops between quantized layers compiles to one graph (aot_eager: the
    inductor backend needs a C++ build per graph, ~10 s on CI; the GPU test compiles with inductor)."""
    torch._dynamo.reset()
    model = nn.Sequential(QuantLinear.from_linear(_linear(gen), "gptq"), nn.GELU(),
                          QuantLinear.from_linear(_linear(gen, K=64, N=256), "bnb_nf4"))
    x = torch.randn(4, 256, generator=gen)
    c = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert torch.equal(c(x), model(x))


def test_fake_impl_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(2, 3, 256, dtype=torch.float16)
        y = torch.ops.quantcc.quant_linear(x, [torch.empty(4, dtype=torch.int32)], "a", None, "k", 40)
    assert y.shape == (2, 3, 40) and y.dtype == torch.float16


# -- the kernel path, run by the Triton interpreter with a faked GPU -----------------------------------------


def test_kernel_dispatch_heuristic_then_tuned(fake_gpu, gen, caplog):
    lin = _linear(gen, K=256, N=48)
    q = QuantLinear.from_linear(lin, "gptq").half()
    x = torch.randn(3, 256, generator=gen).half()
    with caplog.at_level(logging.WARNING, logger="quantcc.runtime"):
        y = q(x)
        q(x)
    d = q.dispatch(3)
    assert d.kind == "triton" and d.source == "heuristic" and d.bucket == 4 and "gemv" in d.kernel
    assert sum("no tuned config for gptq N=48 K=256" in r.message for r in caplog.records) == 1
    rel = ((y.double() - _ref(q, x)).norm() / _ref(q, x).norm()).item()
    assert rel < REL_TOL[torch.float16]

    # a tuning database entry for this GPU wins over the heuristic
    cfg = ir.KernelConfig(block_m=16, block_n=16, block_k=64, split_k=1, num_warps=4, num_stages=1)
    db = {"schema": 1, "header": HEADER, "entries": {entry_key(q.spec.key, "triton", 48, 256, 32): {
        "format": "gptq", "config": cfg.to_dict(), "us": 1.0, "runner_up": None, "tuned_at": "now",
        "kernel_hash": tuned_kernel_hash(q.spec, 32, 48, 256, cfg, "sm90")}}}
    (fake_gpu / "db").mkdir()
    (fake_gpu / "db" / f"{gpu_slug(HEADER['gpu'])}.json").write_text(json.dumps(db))
    tuning._load_for.cache_clear()
    x = torch.randn(20, 256, generator=gen).half()
    y = q(x)
    d = q.dispatch(20)
    assert d.kind == "triton" and d.source == "db" and cfg.label in d.kernel and "gemm" in d.kernel
    rel = ((y.double() - _ref(q, x)).norm() / _ref(q, x).norm()).item()
    assert rel < REL_TOL[torch.float16]


def test_kernel_dispatch_falls_back_for_formats_without_kernels(fake_gpu, gen, monkeypatch):
    monkeypatch.setattr(op, "_has_template", lambda family: family != "gguf")   # as if gguf had no template
    q = QuantLinear.from_linear(_linear(gen), "gguf_q8_0").half()
    x = torch.randn(2, 256, generator=gen).half()
    d = q.dispatch(2)
    assert d.kind == "reference" and "no Triton decode template for format family 'gguf'" in d.reason
    assert torch.allclose(q(x).double(), _ref(q, x), rtol=REL_TOL[torch.float16], atol=1e-3)
    assert q.dispatch(2, torch.float32).reason == "x is torch.float32; kernels take float16/bfloat16"


def test_force_reference_knob(fake_gpu, gen, monkeypatch):
    q = QuantLinear.from_linear(_linear(gen), "gptq").half()
    assert q.dispatch(1).kind == "triton"
    monkeypatch.setenv("QUANTCC_FORCE_REFERENCE", "1")
    d = q.dispatch(1)
    assert d.kind == "reference" and d.reason == "QUANTCC_FORCE_REFERENCE=1"
