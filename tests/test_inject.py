"""Target matching (PEFT's semantics), freezing, and the errors users see."""

import copy

import pytest
import torch
from models import build

import lorakit


def adapted(model):
    return sorted(n for n, _ in lorakit.lora_layers(model))


def test_list_matches_exact_and_suffix():
    m = lorakit.inject(build("llama"), lorakit.LoraConfig(target_modules=["q_proj", "model.layers.1.mlp.up_proj"]))
    assert adapted(m) == ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj",
                          "model.layers.1.self_attn.q_proj"]


def test_regex_is_full_match():
    m = lorakit.inject(build("llama"), lorakit.LoraConfig(target_modules=r".*\.0\.self_attn\.(k|v)_proj"))
    assert adapted(m) == ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"]
    with pytest.raises(ValueError, match="matched no module"):
        lorakit.inject(build("llama"), lorakit.LoraConfig(target_modules=r"k_proj"))  # not a full match


def test_all_linear_skips_output_head():
    m = lorakit.inject(build("llama"), lorakit.LoraConfig(target_modules="all-linear"))
    names = adapted(m)
    assert len(names) == 14 and "lm_head" not in names
    g = lorakit.inject(build("gpt2"), lorakit.LoraConfig(target_modules="all-linear"))
    assert {n.rsplit(".", 1)[-1] for n in adapted(g)} == {"c_attn", "c_proj", "c_fc"}


def test_exclude_and_layers_to_transform():
    cfg = lorakit.LoraConfig(target_modules="all-linear", exclude_modules=["o_proj"], layers_to_transform=[0])
    names = adapted(lorakit.inject(build("llama"), cfg))
    assert all(".layers.0." in n for n in names) and not any(n.endswith("o_proj") for n in names)
    assert len(names) == 6


def test_rank_and_alpha_patterns():
    cfg = lorakit.LoraConfig(r=8, alpha=8, target_modules=["q_proj", "v_proj"], rank_pattern={r"layers\.1\.self_attn\.q_proj": 2},
                             alpha_pattern={"v_proj": 32})
    m = lorakit.inject(build("llama"), cfg)
    layers = dict(lorakit.lora_layers(m))
    assert layers["model.layers.1.self_attn.q_proj"].adapters["default"].r == 2
    assert layers["model.layers.0.self_attn.q_proj"].adapters["default"].r == 8
    assert layers["model.layers.0.self_attn.v_proj"].adapters["default"].scale == 4.0


def test_no_match_lists_existing_modules():
    with pytest.raises(ValueError) as err:
        lorakit.inject(build("mlp"), lorakit.LoraConfig(target_modules=["query"]))
    msg = str(err.value)
    assert "target_modules=['query'] matched no module" in msg and "lin0 (Linear)" in msg


def test_default_targets_by_model_type():
    assert adapted(lorakit.inject(build("llama"), lorakit.LoraConfig()))[-1].endswith("v_proj")
    with pytest.raises(ValueError, match="no default for model type None"):
        lorakit.inject(build("mlp"), lorakit.LoraConfig())


def test_freezes_everything_but_adapters_and_reports_counts():
    m = lorakit.inject(build("llama"), lorakit.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    report = lorakit.trainable_parameters(m)
    lm_head = 64 * 32
    lora = 2 * 4 * (32 + 32)
    assert report.trainable == lora + lm_head
    assert report.total == sum(p.numel() for p in build("llama").parameters()) + lora
    assert f"{report.percent:.4f}" in str(report)


def test_duplicate_adapter_name_and_bad_name():
    m = lorakit.inject(build("mlp"), lorakit.LoraConfig(target_modules=["lin0"]))
    with pytest.raises(ValueError, match="adapter 'default' already exists"):
        lorakit.inject(m, lorakit.LoraConfig(target_modules=["lin0"]))
    with pytest.raises(ValueError, match="without dots"):
        lorakit.inject(m, lorakit.LoraConfig(target_modules=["lin0"]), adapter_name="a.b")


def test_second_adapter_wraps_same_layers_once():
    m = lorakit.inject(build("mlp"), lorakit.LoraConfig(target_modules=["lin0"]))
    lorakit.inject(m, lorakit.LoraConfig(target_modules=["lin0", "lin1"]), adapter_name="b")
    layers = dict(lorakit.lora_layers(m))
    assert sorted(layers) == ["lin0", "lin1"]
    assert list(layers["lin0"].adapters) == ["default", "b"]
    assert not any(isinstance(mod.base_layer, lorakit.LoraLayer) for mod in layers.values())


def test_config_collects_every_error():
    with pytest.raises(lorakit.ConfigError) as err:
        lorakit.LoraConfig(r=0, alpha=-1, dropout=1.5, init="xavier", bias="some", target_modules=5,
                           rank_pattern={"(": 4})
    msg = str(err.value)
    assert "7 problems" in msg
    for part in ("r=0", "alpha=-1", "dropout=1.5", "init='xavier'", "bias='some'", "target_modules=5", "'('"):
        assert part in msg


def test_unsupported_module_error():
    model = torch.nn.Sequential(torch.nn.LayerNorm(4))
    with pytest.raises(TypeError, match="cannot wrap a LayerNorm"):
        lorakit.inject(model, lorakit.LoraConfig(target_modules=["0"]))


def test_inject_does_not_touch_other_models():
    base = build("mlp")
    before = copy.deepcopy(base.state_dict())
    lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(target_modules=["lin0"], init="pissa"))
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k])


def test_second_all_linear_adapter_reaches_wrapped_layers():
    m = lorakit.inject(build("llama"), lorakit.LoraConfig(target_modules=["q_proj"]))
    lorakit.inject(m, lorakit.LoraConfig(target_modules="all-linear"), adapter_name="b")
    layers = dict(lorakit.lora_layers(m))
    assert len(layers) == 14 and list(layers["model.layers.0.self_attn.q_proj"].adapters) == ["default", "b"]


def test_user_module_named_adapters_is_still_targetable():
    model = torch.nn.Sequential()
    model.add_module("adapters", torch.nn.Linear(3, 3))
    lorakit.inject(model, lorakit.LoraConfig(target_modules=["adapters"]))
    assert [n for n, _ in lorakit.lora_layers(model)] == ["adapters"]
