"""LoHa against PEFT's LoHa (same factors, same inputs) and against the formula written out here."""

import math

import peft
import pytest
import torch
from _peft_parity import check_outputs_and_merge, peft_and_lorakit, zero_factors_match_peft

import lorakit
from lorakit.adapters.base import spec_for
from lorakit.adapters.loha import LohaAdapter

CONVS = ["conv1d", "conv", "conv_strided", "conv_grouped", "conv_reflect", "pw"]


@pytest.mark.parametrize("model_name,targets,tucker", [
    ("mlp", ["lin0", "lin1"], False),
    ("conv", ["conv", "conv_strided", "conv_grouped", "pw", "conv1d"], False),
    ("conv", ["conv", "conv_strided", "conv_grouped", "pw"], True),
    ("llama", ["q_proj", "v_proj", "down_proj"], False),
])
def test_matches_peft(model_name, targets, tucker):
    cfg = peft.LoHaConfig(r=4, alpha=6, target_modules=targets, use_effective_conv2d=tucker)
    _, pm, lk = peft_and_lorakit(model_name, cfg, dict(variant="loha", r=4, alpha=6, target_modules=targets,
                                                       use_effective_conv2d=tucker))
    check_outputs_and_merge(model_name, pm, lk)


def test_formula_and_init():
    layer = torch.nn.Linear(6, 5)
    a = LohaAdapter(spec_for(layer), r=3, alpha=4.5)
    assert torch.equal(a.hada_w2_b, torch.zeros(3, 6)) and torch.equal(a.delta_weight(), torch.zeros(5, 6))
    bound = 1 / math.sqrt(3)  # kaiming_uniform(a=√5) on (out, r) is U(±1/√r)
    assert a.hada_w1_a.abs().max() <= bound and a.hada_w1_a.abs().max() > 0.5 * bound
    with torch.no_grad():
        for p in a.parameters():
            p.normal_()
    expected = (a.hada_w1_a @ a.hada_w1_b) * (a.hada_w2_a @ a.hada_w2_b) * 4.5 / 3
    assert torch.allclose(a.delta_weight(), expected)
    x = torch.randn(2, 6)
    assert torch.allclose(a(x, layer(x), layer), layer(x) + x @ expected.T, atol=1e-6)


def test_tucker_conv_shapes_and_pointwise_fallback():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    a = LohaAdapter(spec_for(conv), r=2, alpha=2, use_effective_conv2d=True)
    assert a.hada_t1.shape == (2, 2, 3, 3) and a.hada_w1_a.shape == (2, 6) and a.hada_w1_b.shape == (2, 4)
    pw = LohaAdapter(spec_for(torch.nn.Conv2d(4, 6, 1)), r=2, alpha=2, use_effective_conv2d=True)
    assert not hasattr(pw, "hada_t1") and pw.hada_w1_b.shape == (2, 4)
    with pytest.raises(ValueError, match="not nn.Embedding"):
        LohaAdapter(spec_for(torch.nn.Embedding(5, 4)), r=2, alpha=2)


def test_bad_init_reported():
    with pytest.raises(lorakit.ConfigError, match=r"init='pissa': expected one of \['kaiming'\] for variant 'loha'"):
        lorakit.LoraConfig(variant="loha", init="pissa")


def test_init_zeroes_what_peft_zeroes():
    targets = ["conv", "pw", "conv_grouped"]
    zero_factors_match_peft("conv", peft.LoHaConfig(r=2, target_modules=targets, use_effective_conv2d=True),
                            dict(variant="loha", r=2, target_modules=targets, use_effective_conv2d=True))
