"""Shared helpers for parity tests against PEFT: copy factors across, compare outputs and merged weights."""

from __future__ import annotations

import copy

import torch
from models import build, example_input, run

import lorakit


def peft_and_lorakit(model_name: str, peft_config, lk_kwargs: dict, seed: int = 0):
    """The same base model adapted by PEFT and by lorakit, with PEFT's (randomised) factors copied to lorakit."""
    import peft

    base = build(model_name, seed)
    pm = peft.get_peft_model(copy.deepcopy(base), peft_config)
    lk = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(**lk_kwargs))
    g = torch.Generator().manual_seed(seed + 1)
    peft_params = {}
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
                # "base_model.model.<path>.<param>.default" -> (<path>, <param>)
                path, _, param = n[len("base_model.model."):-len(".default")].rpartition(".")
                peft_params[(path, param)] = p
    lk_params = {}
    for path, layer in lorakit.lora_layers(lk):
        for pname, p in layer.adapters["default"].named_parameters():
            lk_params[(path, pname)] = p
    assert set(lk_params) == set(peft_params), f"parameter sets differ: {set(lk_params) ^ set(peft_params)}"
    with torch.no_grad():
        for key, p in lk_params.items():
            assert p.shape == peft_params[key].shape, f"{key}: lorakit {tuple(p.shape)} vs PEFT {tuple(peft_params[key].shape)}"
            p.copy_(peft_params[key])
    return base, pm, lk


def check_outputs_and_merge(model_name: str, pm, lk, atol=1e-5):
    x = example_input(model_name)
    with torch.no_grad():
        expected = run(pm, model_name, x)
        got = run(lk, model_name, x)
        assert torch.allclose(got, expected, atol=atol, rtol=1e-4), f"forward differs by {(got - expected).abs().max()}"
        peft_layers = {n[len("base_model.model."):]: m for n, m in pm.named_modules() if hasattr(m, "get_delta_weight")}
        for path, layer in lorakit.lora_layers(lk):
            ours = layer.merged_weight() - layer.weight
            theirs = peft_layers[path].get_delta_weight("default")
            assert torch.allclose(ours, theirs, atol=atol, rtol=1e-4), f"ΔW of {path} differs"
        merged = pm.merge_and_unload()
        assert torch.allclose(run(lorakit.merge_and_unload(lk), model_name, x), run(merged, model_name, x),
                              atol=atol, rtol=1e-4)


def zero_factors_match_peft(model_name: str, peft_config, lk_kwargs: dict) -> None:
    """A fresh adapter zeroes the same factors as PEFT's (so both start as the identity the same way)."""
    import peft

    base = build(model_name)
    pm = peft.get_peft_model(copy.deepcopy(base), peft_config)
    lk = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(**lk_kwargs))
    theirs = {n[len("base_model.model."):-len(".default")] for n, p in pm.named_parameters()
              if p.requires_grad and not p.any()}
    ours = {f"{path}.{n}" for path, layer in lorakit.lora_layers(lk)
            for n, p in layer.adapters["default"].named_parameters() if not p.any()}
    assert ours == theirs and ours, f"zero-initialised factors differ: {ours ^ theirs}"
