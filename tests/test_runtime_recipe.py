"""quantize_model and recipes: first match wins, defaults, options, skip, refusal naming the layer (model left
untouched), on_error='skip', tied weights, the Unsloth-dynamic-4bit preset, and the report.

TinyLM (also used by the checkpoint and GPU tests) has Llama-style module names and small dims."""
import pytest
import torch
from torch import nn

from ir import SpecError
from runtime import SKIP, QuantLinear, Recipe, quantize_model, unsloth_dynamic_4bit


class _Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x):  # a gate instead of softmax attention: only the linears matter here
        return self.o_proj(self.q_proj(x) * torch.sigmoid(self.k_proj(x)) + self.v_proj(x))


class _MLP(nn.Module):
    def __init__(self, d, ff):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(d, ff, bias=False), nn.Linear(d, ff, bias=True)
        self.down_proj = nn.Linear(ff, d, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class _Block(nn.Module):
    def __init__(self, d, ff):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn, self.mlp = _Attn(d), _MLP(d, ff)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class _Inner(nn.Module):
    def __init__(self, vocab, d, ff, n_layers):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(_Block(d, ff) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d)


class TinyLM(nn.Module):
    """model.embed_tokens, model.layers.{i}.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}, lm_head."""

    def __init__(self, vocab=64, d=128, ff=256, n_layers=2, tie=False, seed=0):
        super().__init__()
        self.model = _Inner(vocab, d, ff, n_layers)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.dim() > 1 else 0.02) + (p.dim() == 1))
        if tie:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, ids):
        h = self.model.embed_tokens(ids)
        for block in self.model.layers:
            h = block(h)
        return self.lm_head(self.model.norm(h))


def _kinds(model):
    return {n: (m.spec.name if isinstance(m, QuantLinear) else "fp") for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, QuantLinear))}


def test_first_match_wins_default_and_options():
    model = TinyLM()
    recipe = {
        "lm_head": SKIP,
        "*.layers.0.mlp.*": ("gptq", {"bits": 3}),
        "*.mlp.*": "bnb_nf4",
        "*.self_attn.*_proj": ("gguf_q4_0", {}),
        "*.layers.0.self_attn.q_proj": "awq",       # never reached: the rule above matches first
    }
    report = quantize_model(model, recipe)
    kinds = _kinds(model)
    assert kinds["lm_head"] == "fp"
    assert kinds["model.layers.0.mlp.down_proj"] == "gptq"
    assert model.model.layers[0].mlp.down_proj.spec.param("bits") == 3
    assert kinds["model.layers.1.mlp.up_proj"] == "bnb_nf4"
    assert kinds["model.layers.0.self_attn.q_proj"] == "gguf_q4_0"
    assert report.replaced["model.layers.0.mlp.gate_proj"] == "gptq(bits=3)"
    assert report.replaced["model.layers.1.self_attn.o_proj"] == "gguf_q4_0"
    assert report.skipped == {"lm_head": "recipe rule 'lm_head' says skip"}
    assert len(report.replaced) == 14
    assert model.model.layers[0].mlp.up_proj.bias is not None   # biases travel
    ids = torch.randint(0, 64, (2, 5))
    assert model(ids).shape == (2, 5, 64)


def test_default_target_and_unmatched_layers():
    model = TinyLM(n_layers=1)
    report = quantize_model(model, {"*.q_proj": "gptq"})
    assert list(report.replaced) == ["model.layers.0.self_attn.q_proj"]
    assert report.skipped["lm_head"] == "no rule matched; default is skip"
    model = TinyLM(n_layers=1)
    report = quantize_model(model, {"lm_head": SKIP}, default="gguf_q8_0")
    assert set(report.replaced.values()) == {"gguf_q8_0"} and len(report.replaced) == 7


def test_refusal_names_the_layer_and_leaves_the_model_untouched():
    model = TinyLM(vocab=60, n_layers=1)   # lm_head N = 60 is not a multiple of 8 (GPTQ packs 8 zeros per word)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SpecError, match=r"layer lm_head: gptq: N = 60 \(out_features\) is not a multiple of 8"):
        quantize_model(model, {}, default="gptq")
    assert all(not isinstance(m, QuantLinear) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    report = quantize_model(model, {}, default="gptq", on_error="skip")
    assert "N = 60" in report.skipped["lm_head"] and report.skipped["lm_head"].startswith("gptq refused it")
    assert len(report.replaced) == 7


def test_tied_weights_are_refused():
    model = TinyLM(tie=True, n_layers=1)
    with pytest.raises(SpecError, match=r"layer lm_head: its weight is tied to \['model.embed_tokens.weight'\]"):
        quantize_model(model, {}, default="bnb_nf4")
    report = quantize_model(model, {"lm_head": SKIP}, default="bnb_nf4")
    assert "lm_head" in report.skipped and model.lm_head.weight is model.model.embed_tokens.weight


def test_unsloth_dynamic_4bit_preset():
    model = TinyLM()
    recipe = unsloth_dynamic_4bit()
    report = quantize_model(model, recipe)
    kinds = _kinds(model)
    assert kinds["lm_head"] == "fp"
    assert kinds["model.layers.0.mlp.down_proj"] == kinds["model.layers.1.mlp.down_proj"] == "fp"
    assert {kinds[n] for n in report.replaced} == {"bnb_nf4"} and len(report.replaced) == 12
    spec = model.model.layers[0].mlp.up_proj.spec
    assert spec.param("blocksize") == 64 and spec.param("double_quant") is True
    # model-specific sensitive layers, and a shape NF4 cannot take is kept in 16-bit, not an error
    model = TinyLM(d=96, ff=160, n_layers=1)   # down_proj K = 160 is not a multiple of 64
    report = quantize_model(model, unsloth_dynamic_4bit(sensitive=("*.layers.0.self_attn.o_proj",)))
    assert "o_proj" in " ".join(report.skipped) and "K = 160" in report.skipped["model.layers.0.mlp.down_proj"]


def test_invalid_recipes_are_refused_up_front():
    with pytest.raises(SpecError, match=r"recipe rule '\*.q_proj': unknown format 'gptqq'"):
        Recipe.from_mapping({"*.q_proj": "gptqq"})
    with pytest.raises(SpecError, match=r"recipe rule 'x': format 'gptq' got unknown options \['bitz'\]"):
        Recipe.from_mapping({"x": ("gptq", {"bitz": 4})})
    with pytest.raises(SpecError, match="target 42 is invalid"):
        Recipe.from_mapping({"x": 42})
    with pytest.raises(SpecError, match="on_error = 'ignore' is invalid"):
        Recipe.from_mapping({}, on_error="ignore")
    with pytest.raises(SpecError, match="recipe default: unknown format"):
        Recipe.from_mapping({}, default="int5")
    with pytest.raises(SpecError, match="pass default/on_error inside the Recipe"):
        quantize_model(TinyLM(n_layers=1), Recipe(), default="gptq")
    with pytest.raises(SpecError, match=r"calib names layers that are not being quantized: \['lm_head'\]"):
        quantize_model(TinyLM(n_layers=1), {"lm_head": SKIP}, calib={"lm_head": {"perm": None}})
    with pytest.raises(SpecError, match="use QuantLinear.from_linear"):
        quantize_model(nn.Linear(128, 64), {}, default="gptq")


def test_calibration_inputs_reach_the_encoder():
    model = TinyLM(n_layers=1)
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(3))
    quantize_model(model, {"*.q_proj": ("gptq", {"desc_act": True, "group_size": 32})},
                   calib={"model.layers.0.self_attn.q_proj": {"perm": perm}})
    g_idx = model.model.layers[0].self_attn.q_proj.g_idx
    assert torch.equal(g_idx.long()[perm], torch.arange(128) // 32)   # act-order: perm[j] is in group j // 32


def test_report_prints_only_when_asked(capsys):
    quantize_model(TinyLM(n_layers=1), {"*.q_proj": "gptq"})
    assert capsys.readouterr().out == ""
    report = quantize_model(TinyLM(n_layers=1), {"*.q_proj": "gptq"}, verbose=True)
    out = capsys.readouterr().out
    assert out.strip() == str(report) and "quantized 1 layer(s), kept 7 in 16-bit" in out
