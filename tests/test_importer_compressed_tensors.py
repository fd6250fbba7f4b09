"""compressed-tensors importer: checkpoints written here in the compressed-tensors on-disk layout by an
independent test-side transcription of its pack rules (compressors/quantized_compressors/pack_quantized.py
pack_to_int32 / unpack_from_int32, naive_quantized.py) and decoded by a transcription of its dequantizer
(quantization/lifecycle/forward.py _process_quantization + _dequantize: in the scale dtype, g_idx-sorted groups).
Every imported layer must decode exactly (torch.equal) to the origin's values; where quantcc's format computes
in another dtype than the origin (bf16 scales), the test states and checks the exact relation."""
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import ir
from ir import SpecError
from runtime import QuantLinear
from runtime.importers import from_compressed_tensors


# -- the origin, transcribed -----------------------------------------------------------------------------------
def ct_pack_to_int32(value: torch.Tensor, bits: int, packed_dim: int = 1) -> torch.Tensor:
    """pack_to_int32: signed int8 codes + 2**(bits-1) (unsigned), zero-padded to whole words along packed_dim,
    32 // bits codes per int32 word, code j of a word at bit bits*j (LSB first)."""
    assert value.dtype == torch.int8
    u = value.to(torch.int64) + (1 << (bits - 1))
    if packed_dim == 0:
        u = u.t()
    pf = 32 // bits
    rows, cols = u.shape
    u = torch.nn.functional.pad(u, (0, -cols % pf))
    words = (u.view(rows, -1, pf) << (torch.arange(pf) * bits)).sum(-1)
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)
    return (words.t() if packed_dim == 0 else words).contiguous()


def ct_unpack_from_int32(value: torch.Tensor, bits: int, shape, packed_dim: int = 1) -> torch.Tensor:
    """unpack_from_int32: field i of word m is element m * pf + i along packed_dim; padding cropped; minus offset."""
    pf, mask = 32 // bits, (1 << bits) - 1
    v = value if packed_dim == 1 else value.t()
    out = torch.zeros(v.shape[0], v.shape[1] * pf, dtype=torch.int32)
    for i in range(pf):
        out[:, i::pf] = (v >> (bits * i)) & mask
    out = out[:, :int(shape[packed_dim])]
    out = out if packed_dim == 1 else out.t()
    return (out - (1 << (bits - 1))).to(torch.int8)


def ct_dequantize(x_q, scale, zero_point=None, g_idx=None, group_size=None):
    """_process_quantization(do_dequantize) + _dequantize: computed in scale.dtype; group strategy sorts the
    columns by g_idx (unless absent or holding -1), cuts groups of group_size, and restores the order."""
    dt = scale.dtype
    if group_size is None:                                   # tensor / channel: broadcast
        out = x_q.to(dt)
        if zero_point is not None:
            out = out - zero_point.to(dt)
        return out * scale
    x, perm = x_q, None
    if g_idx is not None and not bool((g_idx == -1).any()):
        perm = torch.argsort(g_idx)
        x = x.index_select(-1, perm)
    x = x.unflatten(-1, (x.shape[-1] // group_size, group_size))
    out = x.to(dt)
    if zero_point is not None:
        out = out - zero_point.unsqueeze(-1).to(dt)
    out = (out * scale.unsqueeze(-1)).flatten(-2)
    return out if perm is None else out.index_select(-1, torch.argsort(perm))


# -- checkpoint writers -------------------------------------------------------------------------------------------
def _args(bits=4, type="int", symmetric=True, strategy="group", group_size=32, dynamic=False, actorder=None):
    return {"num_bits": bits, "type": type, "symmetric": symmetric, "strategy": strategy,
            "group_size": group_size if strategy == "group" else None, "dynamic": dynamic, "actorder": actorder,
            "block_structure": None, "observer": "minmax", "observer_kwargs": {}}


def _config(groups: dict, fmt: str, **extra) -> dict:
    return {"quantization_config": {"quant_method": "compressed-tensors", "format": fmt,
                                    "quantization_status": "compressed", "config_groups": groups,
                                    "ignore": ["lm_head"], "kv_cache_scheme": None, **extra}}


def _write(folder, tensors: dict, config: dict):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _random_layer(gen, N, K, bits, strategy, group_size, symmetric, actorder, scale_dtype):
    """Signed codes, scales, zero points and g_idx as compressed-tensors holds them before compression."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1))
    q = torch.randint(lo, hi, (N, K), generator=gen).to(torch.int8)
    G = {"group": K // (group_size or 1), "channel": 1, "tensor": 1}[strategy]
    rows = 1 if strategy == "tensor" else N
    scale = (torch.rand(rows, G, generator=gen) * 0.02 + 0.001).to(scale_dtype)
    zp = None if symmetric else torch.randint(lo, hi, (rows, G), generator=gen).to(torch.int8)
    g_idx = None
    if actorder == "group":
        g_idx = (torch.randperm(K, generator=gen) // group_size).to(torch.int32)   # act-order: shuffled groups
    return q, scale, zp, g_idx


def _pack_quantized(prefix, q, scale, zp, g_idx, bits, strategy):
    t = {f"{prefix}.weight_packed": ct_pack_to_int32(q, bits), f"{prefix}.weight_scale": scale,
         f"{prefix}.weight_shape": torch.tensor(list(q.shape), dtype=torch.int64)}
    if zp is not None:   # group/channel zero points are packed along N; a per-tensor one stays int8
        t[f"{prefix}.weight_zero_point"] = ct_pack_to_int32(zp, bits, packed_dim=0) if strategy != "tensor" else zp
    if g_idx is not None:
        t[f"{prefix}.weight_g_idx"] = g_idx
    return t


def _origin(t, prefix, bits, strategy, group_size):
    """The origin's decompress path from the stored tensors: unpack, then dequantize."""
    shape = t[f"{prefix}.weight_shape"].tolist()
    q = ct_unpack_from_int32(t[f"{prefix}.weight_packed"], bits, shape)
    scale = t[f"{prefix}.weight_scale"]
    zp = t.get(f"{prefix}.weight_zero_point")
    if zp is not None and strategy != "tensor":
        zp = ct_unpack_from_int32(zp, bits, (shape[0], scale.shape[1]), packed_dim=0)
    g = group_size if strategy == "group" else None
    return ct_dequantize(q, scale, zp, t.get(f"{prefix}.weight_g_idx"), g)


CASES = [  # bits, strategy, group_size, symmetric, actorder, (N, K)
    (4, "group", 32, True, None, (16, 128)),
    (4, "group", 32, False, "group", (16, 128)),
    (4, "channel", None, False, None, (24, 64)),
    (4, "tensor", None, True, None, (8, 64)),
    (4, "tensor", None, False, None, (8, 64)),
    (8, "channel", None, True, "weight", (8, 64)),
    (8, "group", 64, False, "group", (8, 128)),
    (2, "group", 32, False, None, (32, 64)),
    (3, "group", 32, False, None, (32, 96)),      # 10 codes a word here, 32 straddling codes in 3 words in gptq
    (3, "group", 32, True, "group", (32, 96)),
]


@pytest.mark.parametrize("bits,strategy,group_size,symmetric,actorder,shape", CASES)
def test_pack_quantized_fp16_decodes_exactly_like_compressed_tensors(bits, strategy, group_size, symmetric,
                                                                    actorder, shape, tmp_path, gen):
    N, K = shape
    q, scale, zp, g_idx = _random_layer(gen, N, K, bits, strategy, group_size, symmetric, actorder, torch.float16)
    prefix = "model.layers.0.self_attn.q_proj"
    t = _pack_quantized(prefix, q, scale, zp, g_idx, bits, strategy)
    groups = {"group_0": {"targets": ["Linear"], "input_activations": None, "output_activations": None,
                          "weights": _args(bits, "int", symmetric, strategy, group_size, actorder=actorder)}}
    imp = from_compressed_tensors(_write(tmp_path / "ckpt", t, _config(groups, "pack-quantized")))
    qt = imp.layers[prefix]
    assert qt.spec.name == "gptq" and qt.shape == (N, K) and imp.tensors == {}
    assert (qt.spec.param("bits"), qt.spec.param("checkpoint"), qt.spec.param("desc_act")) == (bits, "v2",
                                                                                              actorder == "group")
    assert qt.spec.param("group_size") == (group_size if strategy == "group" else -1)
    if bits != 3:       # the words are GPTQ's, transposed: no bit moves
        assert torch.equal(qt.tensors["qweight"], t[f"{prefix}.weight_packed"].t())
    origin = _origin(t, prefix, bits, strategy, group_size)
    assert origin.dtype == torch.float16
    assert torch.equal(ir.dequantize(qt), origin.float())
    w_ref = ct_dequantize(q, scale, zp, g_idx, group_size if strategy == "group" else None)   # before packing
    assert torch.equal(origin, w_ref)


def test_bf16_scales_sym_int4_round_to_the_origins_bf16_bits(tmp_path, gen):
    """gptq decodes fp16(s * (u - z)); for symmetric int4 the product of an 8-bit bf16 significand and |q| <= 8
    has at most 11 significant bits, so the fp16 decode is the exact product and rounding it to bf16 is
    exactly the origin's bf16 decode."""
    N, K, g = 32, 256, 128
    q, scale, _, _ = _random_layer(gen, N, K, 4, "group", g, True, None, torch.bfloat16)
    t = _pack_quantized("l", q, scale, None, None, 4, "group")
    groups = {"w4a16": {"targets": ["re:.*"], "weights": _args(4, group_size=g)}}
    qt = from_compressed_tensors(_write(tmp_path / "c", t, _config(groups, "pack-quantized"))).layers["l"]
    ours = ir.dequantize(qt)
    origin = _origin(t, "l", 4, "group", g)
    assert origin.dtype == torch.bfloat16 and torch.equal(ours.to(torch.bfloat16), origin)
    exact = (q.double().unflatten(1, (K // g, g)) * scale.double().unsqueeze(-1)).flatten(1)
    assert torch.equal(ours.double(), exact)


@pytest.mark.parametrize("fmt", ["int-quantized", "naive-quantized"])
def test_int8_stored_weight_only_codes_are_repacked_into_gptq(fmt, tmp_path, gen):
    N, K, g = 16, 128, 64
    q, scale, zp, g_idx = _random_layer(gen, N, K, 4, "group", g, False, "group", torch.float16)
    t = {"l.weight": q, "l.weight_scale": scale, "l.weight_zero_point": zp, "l.weight_g_idx": g_idx}
    groups = {"g": {"targets": ["l"], "weights": _args(4, symmetric=False, group_size=g, actorder="group")}}
    qt = from_compressed_tensors(_write(tmp_path / "c", t, _config(groups, fmt))).layers["l"]
    assert qt.spec.name == "gptq" and qt.spec.param("desc_act")
    assert torch.equal(ir.dequantize(qt), ct_dequantize(q, scale, zp, g_idx, g).float())


@pytest.mark.parametrize("kind,strategy,fmt", [("int8", "channel", "int-quantized"),
                                               ("fp8_e4m3", "tensor", "float-quantized"),
                                               ("fp8_e4m3", "channel", "naive-quantized")])
def test_w8a8_static_maps_to_w8a8_static(kind, strategy, fmt, tmp_path, gen):
    from ir.formats.w8a8 import random_fp8_codes
    N, K = 16, 64
    if kind == "int8":
        w = torch.randint(-128, 128, (N, K), generator=gen).to(torch.int8)
    else:
        w = random_fp8_codes((N, K), gen)
    rows = N if strategy == "channel" else 1
    s = (torch.rand(rows, 1, generator=gen) * 0.01 + 0.001).to(torch.bfloat16)
    if strategy == "tensor":
        s = s.reshape(1)
    a = torch.tensor([0.02], dtype=torch.bfloat16)
    t = {"l.weight": w, "l.weight_scale": s, "l.input_scale": a, "l.bias": torch.randn(N, generator=gen)}
    typ = "int" if kind == "int8" else "float"
    groups = {"g": {"targets": ["Linear"], "weights": _args(8, typ, True, strategy),
                    "input_activations": _args(8, typ, True, "tensor")}}
    imp = from_compressed_tensors(_write(tmp_path / "c", t, _config(groups, fmt)))
    qt = imp.layers["l"]
    assert qt.spec.name == "w8a8_static" and qt.spec.param("weight") == kind
    assert torch.equal(qt.tensors["weight"].view(torch.uint8), w.view(torch.uint8))
    assert torch.equal(qt.tensors["act_scale"], a.float()) and qt.tensors["weight_scale"].shape == (N,)
    ours = ir.dequantize(qt)
    origin = ct_dequantize(w, s.reshape(rows, 1))                      # bf16, the scale dtype
    assert torch.equal(ours, w.float() * s.float().reshape(rows, 1))   # the epilogue's fp32 product (exact)
    assert torch.equal(ours.to(torch.bfloat16), origin)
    assert torch.equal(imp.biases["l"], t["l.bias"])


def test_mixed_checkpoint_groups_ignore_and_apply(tmp_path, gen):
    """Two config groups (a regex beats the class target), an ignored lm_head and a norm pass through;
    the import goes into a model and runs."""
    K, N = 64, 16
    q1, s1, z1, _ = _random_layer(gen, N, K, 4, "group", 32, False, None, torch.float16)
    q2, s2, _, _ = _random_layer(gen, N, K, 8, "channel", None, True, None, torch.float16)
    t = {**_pack_quantized("attn", q1, s1, z1, None, 4, "group"), **_pack_quantized("mlp", q2, s2, None, None, 8,
                                                                                     "channel"),
         "lm_head.weight": torch.randn(8, N, generator=gen), "norm.weight": torch.ones(K),
         "attn.bias": torch.zeros(N)}
    groups = {"w4": {"targets": ["Linear"], "weights": _args(4, symmetric=False, group_size=32)},
              "w8": {"targets": ["re:^mlp$"], "weights": _args(8, strategy="channel")}}
    imp = from_compressed_tensors(_write(tmp_path / "c", t, _config(groups, "pack-quantized")))
    assert imp.layers["attn"].spec.param("bits") == 4 and imp.layers["mlp"].spec.param("bits") == 8
    assert sorted(imp.tensors) == ["lm_head.weight", "norm.weight"] and list(imp.biases) == ["attn"]
    model = nn.Module()
    model.attn, model.mlp, model.lm_head = nn.Linear(K, N), nn.Linear(K, N, bias=False), nn.Linear(N, 8, bias=False)
    model.norm = nn.LayerNorm(K, bias=False)
    imp.apply(model)
    assert isinstance(model.attn, QuantLinear) and isinstance(model.mlp, QuantLinear)
    x = torch.randn(3, K, generator=gen)
    assert torch.allclose(model.mlp(x), x @ ct_dequantize(q2, s2).float().T, atol=1e-4)


# -- refusals -----------------------------------------------------------------------------------------------------
def _w4(gen):
    q, s, z, g_idx = _random_layer(gen, 16, 64, 4, "group", 32, False, None, torch.float16)
    return _pack_quantized("l", q, s, z, g_idx, 4, "group")


W4_GROUPS = {"g": {"targets": ["Linear"], "weights": _args(4, symmetric=False, group_size=32)}}


def test_dynamic_activations_are_refused_naming_the_scheme(tmp_path, gen):
    w = torch.randint(-128, 128, (16, 64), generator=gen).to(torch.int8)
    t = {"l.weight": w, "l.weight_scale": torch.ones(16, 1, dtype=torch.bfloat16)}
    for typ, fmt in (("int", "int-quantized"), ("float", "float-quantized")):
        codes = w if typ == "int" else w.to(torch.float8_e4m3fn)
        groups = {"g": {"targets": ["Linear"], "weights": _args(8, typ, True, "channel"),
                        "input_activations": _args(8, typ, True, "token", dynamic=True)}}
        with pytest.raises(SpecError, match=rf"layer l \(config group g\): scheme \(format {fmt}, weights {typ}8 "
                                            rf"channel sym, input_activations {typ}8 token sym dynamic=True\) is not "
                                            r"supported: dynamic \(token\) activation scales .*supported: weight-only"):
            from_compressed_tensors(_write(tmp_path / typ, dict(t, **{"l.weight": codes}), _config(groups, fmt)))


def test_unsupported_schemes_are_refused(tmp_path, gen):
    t = _w4(gen)
    with pytest.raises(SpecError, match=r"layer l .*format 'nvfp4-pack-quantized' .*supported: weight-only int2/3/4/8"):
        from_compressed_tensors(_write(tmp_path / "a", t, _config(W4_GROUPS, "nvfp4-pack-quantized")))
    with pytest.raises(SpecError, match=r"sparsity_config format 'sparse-24-bitmask' .* is not supported"):
        from_compressed_tensors(_write(tmp_path / "b", t, _config(W4_GROUPS, "pack-quantized", sparsity_config={
            "format": "sparse-24-bitmask", "sparsity_structure": "2:4"})))
    fp8_w = {"g": {"targets": ["Linear"], "weights": _args(8, "float", True, "channel")}}
    fp8 = {"l.weight": torch.zeros(16, 64, dtype=torch.float8_e4m3fn), "l.weight_scale": torch.ones(16, 1)}
    with pytest.raises(SpecError, match=r"weight-only float \(fp8 W8A16\) has no quantcc format"):
        from_compressed_tensors(_write(tmp_path / "c", fp8, _config(fp8_w, "float-quantized")))
    block = {"g": {"targets": ["Linear"], "weights": dict(_args(8, "float", True, "block"),
                                                          block_structure=[128, 128])}}
    with pytest.raises(SpecError, match=r"weight strategy 'block'"):
        from_compressed_tensors(_write(tmp_path / "d", fp8, _config(block, "float-quantized")))
    w6 = {"g": {"targets": ["Linear"], "weights": _args(6, symmetric=False, group_size=32)}}
    with pytest.raises(SpecError, match=r"6-bit weights are not supported \(gptq holds \[2, 3, 4, 8\]\)"):
        from_compressed_tensors(_write(tmp_path / "e", t, _config(w6, "pack-quantized")))


def test_actorder_g_idx_that_the_origin_cannot_group_is_refused(tmp_path, gen):
    t = _w4(gen)
    t["l.weight_g_idx"] = torch.tensor([0] * 40 + [1] * 24, dtype=torch.int32)
    with pytest.raises(SpecError, match=r"weight_g_idx must put exactly group_size = 32 columns in each of the 2"):
        from_compressed_tensors(_write(tmp_path / "c", t, _config(W4_GROUPS, "pack-quantized")))


def test_broken_checkpoints_are_refused(tmp_path, gen):
    t = _w4(gen)
    folder = _write(tmp_path / "trunc", t, _config(W4_GROUPS, "pack-quantized"))
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(SpecError, match="cannot read .* truncated or not safetensors"):
        from_compressed_tensors(folder)
    bad = dict(t, **{"l.weight_packed": t["l.weight_packed"].to(torch.int64)})
    with pytest.raises(SpecError, match=r"layer l .*weight_packed has dtype torch.int64; expected torch.int32"):
        from_compressed_tensors(_write(tmp_path / "dtype", bad, _config(W4_GROUPS, "pack-quantized")))
    missing = {k: v for k, v in t.items() if k != "l.weight_scale"}
    with pytest.raises(SpecError, match=r"layer l: missing weight_scale"):
        from_compressed_tensors(_write(tmp_path / "scale", missing, _config(W4_GROUPS, "pack-quantized")))
    nozp = {k: v for k, v in t.items() if k != "l.weight_zero_point"}
    with pytest.raises(SpecError, match=r"asymmetric weights but missing weight_zero_point"):
        from_compressed_tensors(_write(tmp_path / "zp", nozp, _config(W4_GROUPS, "pack-quantized")))
    shape = dict(t, **{"l.weight_shape": torch.tensor([16, 128])})
    with pytest.raises(SpecError, match=r"weight_packed has shape \(16, 8\); expected \(16, 16\)"):
        from_compressed_tensors(_write(tmp_path / "shape", shape, _config(W4_GROUPS, "pack-quantized")))
    tiny = dict(t, **{"l.weight_scale": t["l.weight_scale"].float() * 1e-7})
    with pytest.raises(SpecError, match=r"torch.float32 weight scales are not exact in float16"):
        from_compressed_tensors(_write(tmp_path / "fp32", tiny, _config(W4_GROUPS, "pack-quantized")))
    (tmp_path / "noconf").mkdir()
    save_file(t, str(tmp_path / "noconf" / "model.safetensors"))
    with pytest.raises(SpecError, match="no config.json next to"):
        from_compressed_tensors(tmp_path / "noconf")
    with pytest.raises(SpecError, match=r"layer l holds quantized tensors but no config group targets it"):
        from_compressed_tensors(t, {"quant_method": "compressed-tensors", "format": "pack-quantized",
                                    "config_groups": {"g": {"targets": ["re:mlp"], "weights": _args()}}})


def test_agrees_with_the_compressed_tensors_package_when_installed(tmp_path, gen):
    pq = pytest.importorskip("compressed_tensors.compressors.quantized_compressors.pack_quantized")
    fwd = pytest.importorskip("compressed_tensors.quantization.lifecycle.forward")
    q, scale, zp, g_idx = _random_layer(gen, 16, 128, 4, "group", 32, False, "group", torch.float16)
    t = {"l.weight_packed": pq.pack_to_int32(q, 4), "l.weight_scale": scale,
         "l.weight_zero_point": pq.pack_to_int32(zp, 4, packed_dim=0), "l.weight_g_idx": g_idx,
         "l.weight_shape": torch.tensor([16, 128])}
    groups = {"g": {"targets": ["Linear"], "weights": _args(4, symmetric=False, group_size=32, actorder="group")}}
    qt = from_compressed_tensors(_write(tmp_path / "c", t, _config(groups, "pack-quantized"))).layers["l"]
    unpacked = pq.unpack_from_int32(t["l.weight_packed"], 4, torch.Size([16, 128]))
    zps = pq.unpack_from_int32(t["l.weight_zero_point"], 4, torch.Size([16, 4]), packed_dim=0)
    origin = fwd.dequantize(x_q=unpacked, scale=scale, zero_point=zps, g_idx=g_idx)
    assert torch.equal(ir.dequantize(qt), origin.float())
