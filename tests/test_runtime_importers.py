"""Importers: real-format files built on the CPU by the origins' own code where it installs (gguf-py's
GGUFWriter and quantizers, bitsandbytes' quantize_4bit and QuantState.as_dict(packed=True)), and
GPTQModel/AutoRound/AutoAWQ/EfficientQAT-style safetensors built from the documented layouts. Every imported
layer must decode exactly (torch.equal) to what the origin's decoder gives: gguf-py's dequantize,
bitsandbytes' dequantize_4bit, and in-test transcriptions of GPTQModel's, AutoAWQ's and EfficientQAT's
unpack code (FORMATS.md section 8)."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import ir
from ir import SpecError
from runtime import QuantLinear
from runtime.importers import from_bnb_state_dict, from_efficientqat, from_gguf, from_gguf_file, from_gptq

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


# -- GGUF ---------------------------------------------------------------------------------------------------
def _synthetic_blocks(fmt, N, K, seed):
    from ir.synthetic import synthetic_quantized
    return synthetic_quantized(ir.get_format(fmt), N, K, seed=seed).tensors["blocks"].numpy()


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """Q4_0 and Q8_0 from gguf-py's own quantizer; Q4_K and Q2_K as valid random blocks (gguf-py only decodes
    K-quants); F32 / F16 / BF16 plain tensors, a bias, and a Q6_K tensor nobody supports yet."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    data = {
        "blk.0.attn_q.weight": (gguf.quants.quantize(rng.standard_normal((16, 64), dtype=np.float32), T.Q4_0), T.Q4_0),
        "blk.0.attn_k.weight": (gguf.quants.quantize(rng.standard_normal((8, 96), dtype=np.float32), T.Q8_0), T.Q8_0),
        "blk.0.ffn_up.weight": (_synthetic_blocks("gguf_q4_k", 6, 512, 1), T.Q4_K),
        "blk.0.ffn_down.weight": (_synthetic_blocks("gguf_q2_k", 5, 256, 2), T.Q2_K),
    }
    for name, (arr, t) in data.items():
        w.add_tensor(name, arr, raw_dtype=t)
    w.add_tensor("blk.0.attn_q.bias", rng.standard_normal(16, dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    w.add_tensor("token_embd.weight", rng.standard_normal((10, 64)).astype(np.float16))
    bf = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    w.add_tensor("x.bf16", bf.view(torch.uint8).numpy(), raw_dtype=T.BF16)
    w.add_tensor("output.weight", np.zeros((4, 210), dtype=np.uint8), raw_dtype=T.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, data, bf


def test_gguf_file_layers_decode_like_gguf_py(gguf_file):
    path, data, bf = gguf_file
    imp = from_gguf_file(path, on_unsupported="skip", repack=False)
    assert sorted(imp.layers) == ["blk.0.attn_k", "blk.0.attn_q", "blk.0.ffn_down", "blk.0.ffn_up"]
    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        layer = t.name.removesuffix(".weight")
        if layer in imp.layers:
            qt = imp.layers[layer]
            assert qt.spec.param("ggml_type") == t.tensor_type.name
            assert qt.shape == (int(t.shape[1]), int(t.shape[0]))           # GGUF dims are reversed
            assert torch.equal(qt.tensors["blocks"], torch.from_numpy(np.array(data[t.name][0])))
            origin = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
            assert torch.equal(ir.dequantize(qt), origin), t.name
    assert imp.biases["blk.0.attn_q"].shape == (16,)
    assert torch.equal(imp.tensors["x.bf16"], bf)
    embd = imp.tensors["token_embd.weight"]
    assert embd.dtype == torch.float16 and embd.shape == (10, 64)
    assert list(imp.skipped) == ["output.weight"] and "Q6_K is not supported" in imp.skipped["output.weight"]


def test_gguf_q4_0_and_q8_0_layers_repack_into_gptq_exactly(gguf_file):
    """By default Q4_0 and Q8_0 layers come back as GPTQ v2 int4 / int8 group 32 with float32 dequant (the GPTQ-layout
    kernels): the same weight as gguf-py decodes, bit for bit; the K-quants keep their GGUF blocks."""
    path, data, _ = gguf_file
    imp = from_gguf_file(path, on_unsupported="skip")
    for layer, name, bits in (("blk.0.attn_q", "int4_g32_sym_f32", 4), ("blk.0.attn_k", "int8_g32_sym_f32", 8)):
        qt = imp.layers[layer]
        assert (qt.spec.name, qt.spec.param("bits"), qt.spec.decode.param("compute_dtype")) == (name, bits, "float32")
        arr, t = data[layer + ".weight"]
        origin = torch.from_numpy(gguf.quants.dequantize(arr, t).astype(np.float32))
        assert torch.equal(ir.dequantize(qt), origin)
    assert imp.layers["blk.0.ffn_up"].spec.name == "gguf_q4_k"


def test_gguf_unsupported_types_are_refused_clearly(gguf_file):
    path = gguf_file[0]
    with pytest.raises(SpecError, match=r"1 tensor\(s\) cannot be imported \(output.weight: GGML type Q6_K is not "
                                        r"supported \(supported: \['Q2_K', 'Q4_0', 'Q4_K', 'Q8_0'\]\)\); pass "
                                        r"on_unsupported='skip'"):
        from_gguf_file(path)
    with pytest.raises(SpecError, match="GGML type Q5_0 is not supported"):
        from_gguf(np.zeros(22, np.uint8), T.Q5_0, (1, 32))
    with pytest.raises(SpecError, match=r"needs 36 bytes, got 35"):
        from_gguf(np.zeros(35, np.uint8), "Q4_0", (2, 32))
    with pytest.raises(SpecError, match="K = 48 .* not a multiple of 32"):
        from_gguf(np.zeros(27, np.uint8), T.Q4_0, (1, 48))
    bad = path.parent / "bad.gguf"
    bad.write_bytes(path.read_bytes()[:50])
    with pytest.raises(SpecError, match="cannot read it as GGUF"):
        from_gguf_file(bad)


def test_gguf_raw_bytes_and_apply(gguf_file):
    path, data, _ = gguf_file
    arr = data["blk.0.attn_q.weight"][0]
    qt = from_gguf(arr.tobytes(), 2, (16, 64))                 # bytes and the numeric type id
    assert torch.equal(qt.tensors["blocks"], torch.from_numpy(arr))
    imp = from_gguf_file(path, on_unsupported="skip", repack=False)
    for name in ("blk.0.attn_k", "blk.0.ffn_up", "blk.0.ffn_down"):
        del imp.layers[name]
    imp.tensors = {"blk.0.attn_norm.weight": imp.tensors["blk.0.attn_norm.weight"]}
    model = nn.Module()
    model.attn_q, model.attn_norm = nn.Linear(64, 16), nn.LayerNorm(64, bias=False)
    imp.apply(model, rename=lambda n: n.removeprefix("blk.0."))
    assert isinstance(model.attn_q, QuantLinear) and model.attn_q.spec.name == "gguf_q4_0"
    assert torch.equal(model.attn_q.bias, imp.biases["blk.0.attn_q"])
    x = torch.randn(3, 64)
    ref = x @ ir.dequantize(imp.layers["blk.0.attn_q"]).T + imp.biases["blk.0.attn_q"]
    assert torch.allclose(model.attn_q(x), ref, atol=1e-5)
    with pytest.raises(SpecError, match=r"model tensors not imported \['attn_norm.weight'\]"):
        imp.tensors = {}
        fresh = nn.Module()
        fresh.attn_q, fresh.attn_norm = nn.Linear(64, 16), nn.LayerNorm(64, bias=False)
        imp.apply(fresh, rename=lambda n: n.removeprefix("blk.0."))


# -- GPTQ family --------------------------------------------------------------------------------------------
def _pack_fields(fields: torch.Tensor, bits: int, dim: int, per: int | None = None) -> torch.Tensor:
    """Pack integer fields (< 2**bits) LSB-first along `dim`, `per` (default 32 // bits) per int32 word; a
    short last word is zero-padded (EfficientQAT's 3-bit layout: 10 per word)."""
    per = per or 32 // bits
    f = fields.movedim(dim, -1).to(torch.int64)
    f = torch.nn.functional.pad(f, (0, -f.shape[-1] % per))
    words = (f.reshape(*f.shape[:-1], -1, per) << (torch.arange(per) * bits)).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32).movedim(-1, dim).contiguous()


def gptqmodel_dequantize(qweight, qzeros, scales, g_idx, bits, zero_offset):
    """Transcription of GPTQModel's dequantize_weight for 2/4/8 bits (v1 zeros + 1 after unpacking)."""
    pf, maxq = 32 // bits, 2 ** bits - 1
    wf = torch.arange(0, 32, bits, dtype=torch.int32)
    zeros = torch.bitwise_right_shift(qzeros.unsqueeze(2).expand(-1, -1, pf), wf.view(1, 1, -1)).to(torch.int16)
    zeros = (zeros & maxq).reshape(scales.shape) + zero_offset
    weight = torch.bitwise_right_shift(qweight.unsqueeze(1).expand(-1, pf, -1), wf.view(1, -1, 1)).to(torch.int16)
    weight = (weight & maxq).reshape(-1, qweight.shape[1])
    return (scales[g_idx.long()] * (weight - zeros[g_idx.long()])).float().T


def awq_dequantize(qweight, qzeros, scales, group_size):
    """Transcription of AutoAWQ's unpack_awq + reverse_awq_order + dequantize_gemm (4-bit)."""
    shifts = torch.arange(0, 32, 4)
    iw = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).to(torch.int8).view(qweight.shape[0], -1)
    iz = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).to(torch.int8).view(qzeros.shape[0], -1)
    order = torch.arange(iw.shape[-1]).view(-1, 8)[:, [0, 4, 1, 5, 2, 6, 3, 7]].reshape(-1)
    iw, iz = iw[:, order] & 0xF, iz[:, order] & 0xF
    return ((iw - iz.repeat_interleave(group_size, dim=0)) * scales.repeat_interleave(group_size, dim=0)).float().T


def _gptq_layer(g, K, N, bits, group_size, v1, act_order):
    G = K // group_size
    q = torch.randint(0, 2 ** bits, (K, N), generator=g)
    z = torch.randint(0, 2 ** bits - (1 if v1 else 0), (G, N), generator=g)  # v1 stores zero - 1, zero >= 1
    g_idx = (torch.randperm(K, generator=g) if act_order else torch.arange(K)) // group_size
    return {"qweight": _pack_fields(q, bits, 0), "qzeros": _pack_fields(z, bits, 1),
            "scales": (torch.rand(G, N, generator=g) * 0.01 + 0.001).half(), "g_idx": g_idx.to(torch.int32)}


def _write_checkpoint(folder, layers, config, extra=None):
    sd = {f"{name}.{k}": v for name, t in layers.items() for k, v in t.items()}
    sd.update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "quantize_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("bits,v1,act_order", [(4, True, False), (4, False, True), (2, False, False), (8, True, True)])
def test_gptqmodel_checkpoints_decode_like_gptqmodel(bits, v1, act_order, tmp_path, gen):
    layers = {"model.layers.0.self_attn.q_proj": _gptq_layer(gen, 256, 64, bits, 64, v1, act_order),
              "model.layers.0.mlp.down_proj": _gptq_layer(gen, 128, 32, bits, 64, v1, act_order)}
    config = {"bits": bits, "group_size": 64, "desc_act": act_order, "sym": False, "quant_method": "gptq",
              "checkpoint_format": "gptq" if v1 else "gptq_v2", "pack_dtype": "int32"}
    extra = {"model.layers.0.mlp.down_proj.bias": torch.randn(32, generator=gen).half(),
             "model.norm.weight": torch.ones(256)}
    imp = from_gptq(_write_checkpoint(tmp_path / "ckpt", layers, config, extra))
    assert sorted(imp.layers) == sorted(layers) and list(imp.tensors) == ["model.norm.weight"]
    assert list(imp.biases) == ["model.layers.0.mlp.down_proj"]
    for name, t in layers.items():
        qt = imp.layers[name]
        assert qt.spec.name == "gptq" and qt.spec.param("checkpoint") == ("v1" if v1 else "v2")
        assert qt.spec.param("desc_act") == act_order and qt.spec.param("bits") == bits
        assert all(torch.equal(qt.tensors[k], t[k]) for k in t)                       # no conversion
        origin = gptqmodel_dequantize(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits, 1 if v1 else 0)
        assert torch.equal(ir.dequantize(qt), origin), name


def test_act_order_g_idx_wins_over_a_stale_desc_act(tmp_path, gen):
    layers = {"l": _gptq_layer(gen, 128, 16, 4, 32, False, True)}
    imp = from_gptq(_write_checkpoint(tmp_path / "c", layers, {"bits": 4, "group_size": 32, "desc_act": False,
                                                               "checkpoint_format": "gptq_v2"}))
    assert imp.layers["l"].spec.param("desc_act") is True


def test_autoround_and_dynamic_overrides(tmp_path, gen):
    layers = {"a": _gptq_layer(gen, 128, 16, 4, 128, True, False), "b": _gptq_layer(gen, 128, 16, 2, 64, True, False)}
    base = {"bits": 4, "group_size": 128, "sym": True, "quant_method": "auto-round", "data_type": "int",
            "extra_config": {"b": {"bits": 2, "group_size": 64}}}
    imp = from_gptq(_write_checkpoint(tmp_path / "gptq", layers, dict(base, packing_format="auto_round:auto_gptq")))
    assert imp.layers["a"].spec.param("checkpoint") == "v1" and imp.layers["b"].spec.param("bits") == 2
    for name, t in layers.items():
        bits = imp.layers[name].spec.param("bits")
        assert torch.equal(ir.dequantize(imp.layers[name]),
                           gptqmodel_dequantize(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits, 1))
    imp = from_gptq(_write_checkpoint(tmp_path / "native", layers, dict(base, packing_format="auto_round")))
    assert imp.layers["a"].spec.param("checkpoint") == "v2"    # auto_round_extension stores zeros as is
    gptqmodel = {"bits": 4, "group_size": 128, "checkpoint_format": "gptq",
                 "dynamic": {r"-:c": {}, r"+:b$": {"bits": 2, "group_size": 64}}}
    imp = from_gptq(_write_checkpoint(tmp_path / "dyn", layers, gptqmodel))
    assert imp.layers["b"].spec.param("bits") == 2 and imp.layers["b"].spec.param("group_size") == 64


def test_awq_checkpoint_decodes_like_autoawq(tmp_path, gen):
    K, N, gs = 256, 64, 128
    q, z = torch.randint(0, 16, (K, N), generator=gen), torch.randint(0, 16, (K // gs, N), generator=gen)
    order = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])   # AWQ packs column 8j + order[i] into nibble i of word j
    pack = lambda f: _pack_fields(f.reshape(f.shape[0], -1, 8)[:, :, order].reshape(f.shape), 4, 1)  # noqa: E731
    t = {"qweight": pack(q), "qzeros": pack(z), "scales": (torch.rand(K // gs, N, generator=gen) * 0.01).half()}
    cfg = {"quant_method": "awq", "version": "gemm", "zero_point": True, "w_bit": 4, "q_group_size": gs}
    ref = awq_dequantize(t["qweight"], t["qzeros"], t["scales"], gs)
    imp = from_gptq(_write_checkpoint(tmp_path / "awq", {"l": t}, cfg), repack=False)
    assert imp.layers["l"].spec.name == "awq" and imp.layers["l"].shape == (N, K)
    assert torch.equal(ir.dequantize(imp.layers["l"]), ref)
    # by default the layer is repacked into GPTQ v2 (int4_g128_asym at group 128): the same weight, bit for bit
    imp = from_gptq(_write_checkpoint(tmp_path / "awq2", {"l": t}, cfg))
    assert imp.layers["l"].spec.name == "int4_g128_asym" and imp.layers["l"].shape == (N, K)
    assert torch.equal(ir.dequantize(imp.layers["l"]), ref)


def test_efficientqat_native_checkpoint(tmp_path, gen):
    """EfficientQAT packs 32 // bits fields per word (3-bit: 10 per word, the last word partly empty)."""
    K, N, gs, bits = 128, 16, 64, 3
    q, z = torch.randint(0, 8, (K, N), generator=gen), torch.randint(0, 8, (K // gs, N), generator=gen)
    t = {"qweight": _pack_fields(q, bits, 0, per=10), "qzeros": _pack_fields(z, bits, 1, per=10),
         "scales": (torch.rand(K // gs, N, generator=gen) * 0.01).half(),
         "g_idx": (torch.arange(K) // gs).to(torch.int32)}
    imp = from_efficientqat(_write_checkpoint(tmp_path / "eqat", {"l": t}, {}), bits=3, group_size=64)
    qt = imp.layers["l"]
    assert qt.spec.name == "eqat" and qt.shape == (N, K)
    g = torch.arange(K) // gs
    origin = ((q - z[g]).half() * t["scales"][g]).float().T     # EfficientQAT: (w - zeros) * scales in fp16
    assert torch.equal(ir.dequantize(qt), origin)


def test_gptq_refusals_name_the_problem(tmp_path, gen):
    layers = {"l": _gptq_layer(gen, 128, 16, 4, 128, True, False)}
    with pytest.raises(SpecError, match="checkpoint_format 'marlin' is not supported"):
        from_gptq(_write_checkpoint(tmp_path / "m", layers, {"bits": 4, "checkpoint_format": "marlin"}))
    with pytest.raises(SpecError, match="quant_method 'bitnet' is not a GPTQ-family checkpoint"):
        from_gptq(_write_checkpoint(tmp_path / "q", layers, {"quant_method": "bitnet"}))
    bad = {"l": dict(layers["l"], scales=layers["l"]["scales"].to(torch.bfloat16))}
    with pytest.raises(SpecError, match="layer l: gptq: tensor 'scales' has shape .* dtype torch.bfloat16"):
        from_gptq(_write_checkpoint(tmp_path / "bf", bad, {"bits": 4}))
    partial = {"l": {k: v for k, v in layers["l"].items() if k != "qzeros"}}
    with pytest.raises(SpecError, match=r"layer l has qweight but lacks \['qzeros'\]"):
        from_gptq(_write_checkpoint(tmp_path / "p", partial, {"bits": 4}))
    folder = tmp_path / "noconf"
    folder.mkdir()
    save_file({"l.qweight": layers["l"]["qweight"]}, str(folder / "model.safetensors"))
    with pytest.raises(SpecError, match="no quantize_config.json"):
        from_gptq(folder)


# -- bitsandbytes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [True, False])
def test_bnb_state_dict_decodes_like_bitsandbytes(quant_type, double_quant, tmp_path, gen):
    F = pytest.importorskip("bitsandbytes.functional")
    sd = {}
    origin = {}
    for name, (N, K, dtype) in {"layers.0.q": (16, 128, torch.float16), "layers.0.o": (8, 256, torch.bfloat16)}.items():
        W = (torch.randn(N, K, generator=gen) * 0.05).to(dtype)
        q, st = F.quantize_4bit(W, blocksize=64, compress_statistics=double_quant, quant_type=quant_type)
        sd[f"{name}.weight"] = q
        sd.update({f"{name}.weight.{k}": v for k, v in st.as_dict(packed=True).items()})
        origin[name] = F.dequantize_4bit(q, st)
    sd["layers.0.q.bias"] = torch.zeros(16, dtype=torch.float16)
    sd["norm.weight"] = torch.ones(128)
    save_file(sd, str(tmp_path / "bnb.safetensors"))
    imp = from_bnb_state_dict(tmp_path / "bnb.safetensors")
    assert sorted(imp.layers) == ["layers.0.o", "layers.0.q"] and list(imp.tensors) == ["norm.weight"]
    for name, ref in origin.items():
        qt = imp.layers[name]
        assert qt.spec.name == f"bnb_{quant_type}" and qt.spec.param("double_quant") == double_quant
        assert torch.equal(ir.dequantize(qt).to(ref.dtype), ref), name   # bnb decodes in fp32, rounds once
    q = imp.quant_linear("layers.0.q")
    assert q.bias is not None and q(torch.randn(2, 128)).shape == (2, 16)


def test_bnb_refusals(gen):
    F = pytest.importorskip("bitsandbytes.functional")

    def state_dict(K):
        q, st = F.quantize_4bit(torch.randn(8, K, generator=gen), blocksize=64, compress_statistics=True,
                                quant_type="nf4")
        return {"l.weight": q, **{f"l.weight.{k}": v for k, v in st.as_dict(packed=True).items()}}
    with pytest.raises(SpecError, match=r"layer l: bnb_nf4: K = 96 \(in_features\) is not a multiple of 64"):
        from_bnb_state_dict(state_dict(96))   # bnb blocks of 64 would straddle rows
    sd = {k: v for k, v in state_dict(128).items() if not k.endswith("nested_quant_map")}
    with pytest.raises(SpecError, match=r"state dict lacks \['l.weight.nested_quant_map'\]"):
        from_bnb_state_dict(sd)
    bad = {"l.weight": sd["l.weight"],
           "l.weight.quant_state.bitsandbytes__nf4": torch.tensor(list(b"{nope"), dtype=torch.uint8)}
    with pytest.raises(SpecError, match="is not the JSON bitsandbytes packs"):
        from_bnb_state_dict(bad)
