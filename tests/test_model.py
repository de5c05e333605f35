"""Adapter sets: stacking with strengths, switching, disabling, deleting, safe merging."""

import copy

import pytest
import torch
from contract import randomize
from models import build, example_input, run

import lorakit


def two_adapters():
    base = build("llama")
    m = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), "a")
    lorakit.inject(m, lorakit.LoraConfig(r=2, alpha=4, target_modules=["v_proj", "down_proj"]), "b")
    randomize(m, seed=1)
    return base, m


def reference(base, model, strengths):
    """A plain copy of ``base`` with W + Σ strength·ΔW written into its weights (the formula)."""
    ref = copy.deepcopy(base)
    with torch.no_grad():
        for name, layer in lorakit.lora_layers(model):
            w = ref.get_submodule(name).weight
            for adapter, s in strengths.items():
                if adapter in layer.adapters:
                    w += s * layer.adapters[adapter].delta_weight()
    return ref


@pytest.mark.parametrize("strengths", [{"a": 1.0}, {"b": 0.5}, {"a": 0.7, "b": -1.3}])
def test_stacked_strengths_follow_formula(strengths):
    base, m = two_adapters()
    lorakit.set_active_adapters(m, strengths)
    x = example_input("llama")
    expected = run(reference(base, m, strengths), "llama", x)
    torch.testing.assert_close(run(m, "llama", x), expected, atol=1e-5, rtol=1e-4)
    lorakit.merge(m)
    torch.testing.assert_close(run(m, "llama", x), expected, atol=1e-5, rtol=1e-4)
    lorakit.unmerge(m)
    assert lorakit.active_adapters(m) == strengths


def test_list_activation_means_strength_one():
    _, m = two_adapters()
    lorakit.set_active_adapters(m, ["a", "b"])
    assert lorakit.active_adapters(m) == {"a": 1.0, "b": 1.0}


def test_switching_refused_while_merged():
    _, m = two_adapters()
    lorakit.merge(m)
    with pytest.raises(RuntimeError, match="call lorakit.unmerge"):
        lorakit.set_active_adapters(m, "a")
    lorakit.unmerge(m)
    lorakit.set_active_adapters(m, "a")


def test_unknown_adapter_errors():
    _, m = two_adapters()
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['c'\]; this model has \['a', 'b'\]"):
        lorakit.set_active_adapters(m, "c")
    with pytest.raises(ValueError, match="unknown adapter 'c'"):
        lorakit.delete_adapter(m, "c")


def test_delete_adapter_and_unwrap():
    base, m = two_adapters()
    lorakit.set_active_adapters(m, {"a": 1.0, "b": 1.0})
    lorakit.delete_adapter(m, "b")
    assert lorakit.adapter_names(m) == ["a"] and lorakit.active_adapters(m) == {"a": 1.0}
    assert "model.layers.0.mlp.down_proj" not in dict(lorakit.lora_layers(m))  # only b lived there
    lorakit.delete_adapter(m, "a")
    assert not list(lorakit.lora_layers(m))
    x = example_input("llama")
    assert torch.equal(run(m, "llama", x), run(base, "llama", x))


def test_delete_merged_is_refused():
    _, m = two_adapters()
    lorakit.merge(m)  # inject activated the last adapter added, "b"
    with pytest.raises(RuntimeError, match="adapter 'b' is merged"):
        lorakit.delete_adapter(m, "b")
    lorakit.delete_adapter(m, "a")  # not merged: fine


def test_disable_restores_state_after_exception():
    base, m = two_adapters()
    x = example_input("llama")
    before = run(m, "llama", x)
    with pytest.raises(KeyError):
        with lorakit.disable_adapters(m):
            assert torch.equal(run(m, "llama", x), run(base, "llama", x))
            raise KeyError("boom")
    torch.testing.assert_close(run(m, "llama", x), before)


def test_safe_merge_refuses_nan_and_changes_nothing():
    _, m = two_adapters()
    layer = dict(lorakit.lora_layers(m))["model.layers.1.self_attn.v_proj"]
    with torch.no_grad():
        layer.adapters["b"].lora_B[0, 0] = float("nan")
    lorakit.set_active_adapters(m, ["a", "b"])
    weights = {n: layer.weight.clone() for n, layer in lorakit.lora_layers(m)}
    with pytest.raises(ValueError, match="NaN/Inf into 1 layer"):
        lorakit.merge(m, safe=True)
    for n, layer in lorakit.lora_layers(m):
        assert torch.equal(layer.weight, weights[n]) and not layer.merged


def test_merge_and_unload_with_saved_module():
    base = build("mlp")
    m = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(target_modules=["lin0"], modules_to_save=["head"]))
    randomize(m)
    with torch.no_grad():
        m.head.modules_to_save["default"].weight.add_(1.0)
    x = example_input("mlp")
    expected = run(m, "mlp", x)
    plain = lorakit.merge_and_unload(m)
    assert type(plain.head) is torch.nn.Linear and type(plain.lin0) is torch.nn.Linear
    torch.testing.assert_close(run(plain, "mlp", x), expected, atol=1e-6, rtol=1e-5)


def test_unload_without_merge_gives_base():
    base, m = two_adapters()
    x = example_input("llama")
    plain = lorakit.unload(m)
    assert torch.equal(run(plain, "llama", x), run(base, "llama", x))
