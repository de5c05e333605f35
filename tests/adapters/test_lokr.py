"""LoKr against PEFT's LoKr (same factors, same inputs), the factorisation rule, and the Kronecker formula."""

import peft
import pytest
import torch
from _peft_parity import check_outputs_and_merge, peft_and_lorakit, zero_factors_match_peft

from lorakit.adapters.base import spec_for
from lorakit.adapters.lokr import LokrAdapter, factorization


def _peft_factorization(dim, factor=-1):
    from peft.tuners.lokr.layer import factorization as theirs

    return theirs(dim, factor)


@pytest.mark.parametrize("dim", [1, 2, 7, 12, 36, 64, 96, 127, 128, 256, 768, 1000, 4096, 11008])
@pytest.mark.parametrize("factor", [-1, 3, 4, 8, 16])
def test_factorization_matches_peft(dim, factor):
    assert factorization(dim, factor) == _peft_factorization(dim, factor)


CONV_T = ["conv", "conv_strided", "conv_grouped", "pw"]


@pytest.mark.parametrize("model_name,targets,kw", [
    ("mlp", ["lin0", "lin1"], dict(r=4)),                                    # full W2
    ("mlp", ["lin0", "lin1"], dict(r=1)),                                    # low-rank W2
    ("mlp", ["lin0", "lin1"], dict(r=1, decompose_both=True, decompose_factor=2)),
    ("conv", CONV_T + ["conv1d"], dict(r=1)),
    ("conv", CONV_T, dict(r=1, use_effective_conv2d=True)),
    ("conv", CONV_T, dict(r=8)),
    ("llama", ["q_proj", "v_proj", "down_proj"], dict(r=2)),
])
def test_matches_peft(model_name, targets, kw):
    cfg = peft.LoKrConfig(alpha=3, target_modules=targets, **kw)
    _, pm, lk = peft_and_lorakit(model_name, cfg, dict(variant="lokr", alpha=3, target_modules=targets, **kw))
    check_outputs_and_merge(model_name, pm, lk)


def test_formula_and_inits():
    layer = torch.nn.Linear(12, 8)
    a = LokrAdapter(spec_for(layer), r=1, alpha=2)
    # out 8 -> (2, 4), in 12 -> (3, 4); r=1 < 4/2 so W2 is low-rank
    assert a.lokr_w1.shape == (2, 3) and a.lokr_w2_a.shape == (4, 1) and a.lokr_w2_b.shape == (1, 4)
    assert torch.equal(a.lokr_w1, torch.zeros(2, 3)) and a.lokr_w2_a.abs().sum() > 0  # PEFT: W1 = 0
    ly = LokrAdapter(spec_for(layer), r=1, alpha=2, init="lycoris")
    assert torch.equal(ly.lokr_w2_b, torch.zeros(1, 4)) and ly.lokr_w1.abs().sum() > 0  # LyCORIS: W2 = 0
    with torch.no_grad():
        for p in a.parameters():
            p.normal_()
    w1, w2 = a.lokr_w1, a.lokr_w2_a @ a.lokr_w2_b
    expected = torch.zeros(8, 12)
    for i in range(2):
        for j in range(3):
            expected[4 * i:4 * i + 4, 4 * j:4 * j + 4] = w1[i, j] * w2
    assert torch.allclose(a.delta_weight(), expected * 2.0, atol=1e-6)


@pytest.mark.parametrize("init,peft_init", [("kaiming", True), ("lycoris", "lycoris")])
def test_init_zeroes_what_peft_zeroes(init, peft_init):
    for kw in (dict(r=1), dict(r=8), dict(r=1, decompose_both=True, decompose_factor=2)):
        zero_factors_match_peft("mlp", peft.LoKrConfig(target_modules=["lin0", "lin1"], init_weights=peft_init, **kw),
                                dict(variant="lokr", target_modules=["lin0", "lin1"], init=init, **kw))
