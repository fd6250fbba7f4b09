"""QuantLinear on a CUDA GPU: generated kernels against the reference at several formats, M buckets and
dtypes; torch.compile(fullgraph=True) with inductor (and its CUDA-graph mode); manual CUDA-graph capture and
replay; a quantized TinyLM against the CPU path; the reference fallback made capturable by
cache_dequantized; prebuilt TVM cubins dispatched by QuantLinear(backend="tvm"). Skipped without CUDA
(conftest). Needs no gguf or bitsandbytes, nor TVM."""
from pathlib import Path

import pytest
import torch

import ir
from ir.synthetic import synthetic_quantized
from kernel_harness import REL_TOL
from runtime import SKIP, QuantLinear, op, quantize_model, tvm_artifacts, use_tvm_artifacts
from test_runtime_recipe import TinyLM

pytestmark = pytest.mark.gpu
DEV = "cuda"
# formats with Triton kernels, each at a legal (N, K); synthetic contents (valid codes, realistic scales)
CASES = {"gptq": (512, 1024), "awq": (384, 512), "bnb_nf4": (256, 1024), "gguf_q4_k": (256, 1024),
         "gguf_q8_0": (320, 512)}
MS = (1, 3, 16, 300)   # M buckets 1, 4 (gemv), 16, >256 (gemm)


def _layer(name, seed=0, bias=True):
    N, K = CASES[name]
    qt = synthetic_quantized(ir.get_format(name), N, K, seed=seed)
    b = torch.randn(N, generator=torch.Generator().manual_seed(seed)) * 0.1 if bias else None
    return QuantLinear.from_quantized(qt, b).to(DEV)


def _ref(q, x):
    W = q.dequantize().double().to(x.device)
    y = x.double() @ W.T
    return y + q.bias.double() if q.bias is not None else y


def _rel(y, ref):
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernels_match_reference(name, dtype):
    q = _layer(name)
    N, K = CASES[name]
    g = torch.Generator(device=DEV).manual_seed(1)
    for M in MS:
        x = (torch.randn(M, K, generator=g, device=DEV) * 0.5).to(dtype)
        d = q.dispatch(M, dtype)
        assert d.kind == "triton", d.reason
        y = q(x)
        assert y.dtype == dtype and y.shape == (M, N)
        err = _rel(y, _ref(q, x))
        assert err < REL_TOL[dtype], f"{name} M={M} {dtype} ({d.kernel}, {d.source}): rel err {err:.2e}"
    x3 = torch.randn(2, 5, K, device=DEV).to(dtype)   # leading dims (split-K atomics: not bit-reproducible)
    assert _rel(q(x3), q(x3.reshape(10, K)).reshape(2, 5, N).double()) < REL_TOL[dtype]


def test_torch_compile_fullgraph_inductor():
    torch._dynamo.reset()
    model = torch.nn.Sequential(_layer("gptq"), torch.nn.GELU(), _layer("gguf_q8_0", bias=False)).half()
    x = torch.randn(16, 1024, device=DEV, dtype=torch.float16)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    assert torch.allclose(compiled(x), eager, rtol=1e-3, atol=1e-3)
    for M in (1, 7, 64):   # other M buckets through the same compiled graph (dynamic M)
        xm = torch.randn(M, 1024, device=DEV, dtype=torch.float16)
        assert torch.allclose(compiled(xm), model(xm), rtol=1e-3, atol=1e-3)
    torch._dynamo.reset()
    graphed = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        out = graphed(x)
    assert torch.allclose(out, eager, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ["gptq", "bnb_nf4", "gguf_q4_k"])
@pytest.mark.parametrize("M", [1, 16, 128])
def test_cuda_graph_capture_and_replay(name, M):
    q = _layer(name).half()
    N, K = CASES[name]
    q.warmup(batches=(M,))                       # compile before capture
    x = torch.randn(M, K, device=DEV, dtype=torch.float16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            q(x)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = q(x)
    for seed in (5, 6):
        x.copy_(torch.randn(M, K, device=DEV, generator=torch.Generator(device=DEV).manual_seed(seed)).half())
        graph.replay()
        torch.cuda.synchronize()
        assert torch.allclose(y, q(x), rtol=1e-3, atol=1e-3)
        assert _rel(y, _ref(q, x)) < REL_TOL[torch.float16]


def test_reference_fallback_on_gpu_and_capturable_with_cache(monkeypatch):
    monkeypatch.setattr(op, "_has_template", lambda family: family != "gguf")   # as if gguf had no kernel
    monkeypatch.setattr(op, "_DISPATCH", {})
    q = _layer("gguf_q8_0").half()
    x = torch.randn(4, 512, device=DEV, dtype=torch.float16)
    assert q.dispatch(4).kind == "reference"
    y = q(x)
    assert _rel(y, _ref(q, x)) < REL_TOL[torch.float16]
    q.cache_dequantized()
    g = torch.cuda.CUDAGraph()
    q(x)
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        yg = q(x)
    g.replay()
    torch.cuda.synchronize()
    assert torch.allclose(yg, y, rtol=1e-3, atol=1e-3)


def test_quantized_model_on_gpu_matches_cpu_path():
    recipe = {"lm_head": SKIP, "*.self_attn.*": "gptq", "*.mlp.gate_proj": "bnb_nf4", "*.mlp.up_proj": "gguf_q4_0",
              "*.mlp.down_proj": "awq"}
    model = TinyLM()
    quantize_model(model, recipe)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu = model(ids)
        gpu_model = model.to(DEV).half()
        for m in gpu_model.modules():
            if isinstance(m, QuantLinear):
                assert m.dispatch(18).kind == "triton"
        gpu = gpu_model(ids.to(DEV)).float().cpu()
    assert _rel(gpu, cpu.double()) < 1e-2   # fp16 activations and kernels vs the fp32 CPU path


TVM_DIR = Path(__file__).resolve().parent.parent / "quantcc_out" / "tvm_runtime_test"


@pytest.mark.skipif(not TVM_DIR.is_dir(), reason=f"{TVM_DIR} is absent: build it with `bash scripts/build_tvm_test_"
                    f"artifacts.sh` where TVM and nvcc are installed and carry quantcc_out/tvm_runtime_test here")
@pytest.mark.parametrize("name", ["gptq", "bnb_nf4"])
def test_tvm_backend_prebuilt_artifacts(name, monkeypatch):
    """QuantLinear(backend="tvm") runs the cubins built ahead on the build machine (this one needs no TVM):
    fp16 and bf16 at M = 1 (gemv) and 16 (gemm) against the reference decode, eager, under
    torch.compile(fullgraph=True), and captured in a CUDA graph and replayed on new inputs."""
    monkeypatch.setattr(op, "_DISPATCH", {})
    monkeypatch.setattr(tvm_artifacts, "_FOLDERS", {})
    folder = (TVM_DIR / name).resolve()
    use_tvm_artifacts(folder)
    N, K = 256, 512
    qt = synthetic_quantized(ir.get_format(name), N, K, seed=7)
    bias = torch.randn(N, generator=torch.Generator().manual_seed(7)) * 0.1
    g = torch.Generator(device=DEV).manual_seed(1)
    for dtype in (torch.float16, torch.bfloat16):
        q = QuantLinear.from_quantized(qt, bias, backend="tvm").to(DEV).to(dtype)
        for M in (1, 16):
            d = q.dispatch(M, dtype)
            assert (d.kind, d.source) == ("tvm", f"artifact:{folder}"), d
            x = (torch.randn(M, K, generator=g, device=DEV) * 0.5).to(dtype)
            y = q(x)
            assert y.dtype == dtype and y.shape == (M, N)
            err = _rel(y, _ref(q, x))
            assert err < REL_TOL[dtype], f"{name} M={M} {dtype} ({d.kernel}): rel err {err:.2e}"
    q = QuantLinear.from_quantized(qt, bias, backend="tvm").to(DEV).half()
    q.warmup(batches=(1, 16))                    # loads the cubins before capture
    torch._dynamo.reset()
    compiled = torch.compile(q, fullgraph=True)
    x16 = torch.randn(16, K, device=DEV, dtype=torch.float16)
    assert torch.allclose(compiled(x16), q(x16), rtol=1e-3, atol=1e-3)
    for M in (1, 16):
        x = torch.randn(M, K, device=DEV, dtype=torch.float16)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            q(x)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = q(x)
        for seed in (5, 6):
            x.copy_(torch.randn(M, K, device=DEV, generator=torch.Generator(device=DEV).manual_seed(seed)).half())
            graph.replay()
            torch.cuda.synchronize()
            assert torch.allclose(y, q(x), rtol=1e-3, atol=1e-3)
            assert _rel(y, _ref(q, x)) < REL_TOL[torch.float16], f"{name} M={M} graph replay"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_awq_repacked_to_gptq_v2_matches_the_awq_reference(dtype):
    """An AutoAWQ weight repacked by ir.convert (what runtime.importers.from_gptq does) runs the int4_g128_asym
    kernels and gives the AWQ weight's product at every M bucket family."""
    from ir.convert import convert, repack_target
    N, K = CASES["awq"]
    awq = synthetic_quantized(ir.get_format("awq"), N, K, seed=3)
    q = QuantLinear.from_quantized(convert(awq, repack_target(awq.spec))).to(DEV)
    assert q.spec.name == "int4_g128_asym"
    W = ir.dequantize(awq).double().to(DEV)
    g = torch.Generator(device=DEV).manual_seed(4)
    for M in MS:
        x = (torch.randn(M, K, generator=g, device=DEV) * 0.5).to(dtype)
        assert q.dispatch(M, dtype).kind == "triton"
        err = _rel(q(x), x.double() @ W.T)
        assert err < REL_TOL[dtype], f"repacked awq M={M} {dtype}: rel err {err:.2e}"
