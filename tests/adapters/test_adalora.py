"""AdaLoRA's P Λ Q layer against PEFT's SVDLinear/SVDConv2d (same factors, same inputs), init and keep()."""

import peft
import pytest
import torch
from _peft_parity import check_outputs_and_merge, peft_and_lorakit

from lorakit.adapters.adalora import AdaLoraAdapter
from lorakit.adapters.base import spec_for


@pytest.mark.parametrize("model_name,targets", [
    ("mlp", ["lin0", "lin1"]),
    ("conv", ["conv", "conv_strided", "pw"]),
    ("llama", ["q_proj", "v_proj", "down_proj"]),
])
def test_matches_peft(model_name, targets):
    cfg = peft.AdaLoraConfig(init_r=4, lora_alpha=6, target_modules=targets, total_step=10)
    _, pm, lk = peft_and_lorakit(model_name, cfg, dict(variant="adalora", r=4, alpha=6, target_modules=targets))
    check_outputs_and_merge(model_name, pm, lk, atol=2e-5)  # PEFT divides by ranknum + 1e-5


def test_init_formula_and_keep():
    layer = torch.nn.Linear(40, 30)
    a = AdaLoraAdapter(spec_for(layer), r=6, alpha=12)
    assert torch.equal(a.lora_E, torch.zeros(6, 1))
    assert 0.01 < a.lora_A.std() < 0.03 and 0.01 < a.lora_B.std() < 0.03  # N(0, 0.02²)
    with torch.no_grad():
        a.lora_E.normal_()
    expected = a.lora_B @ torch.diag(a.lora_E.view(-1)) @ a.lora_A * 12 / 6
    assert torch.allclose(a.delta_weight(), expected, atol=1e-6)
    keep = torch.tensor([True, False, True, True, False, False])
    with torch.no_grad():
        a.lora_E[~keep] = 0
    before = a.delta_weight()
    a.keep(keep)
    assert a.r == 3 and a.scale == 2.0 and torch.allclose(a.delta_weight(), before, atol=1e-6)
    with pytest.raises(ValueError, match="rank mask has 6 entries but this layer has 3 triplets"):
        a.keep(keep)


def test_combinations_that_make_no_sense_are_refused():
    import lorakit

    with pytest.raises(lorakit.ConfigError) as err:
        lorakit.LoraConfig(variant="adalora", init="pissa", adalora=dict(beta1=1.0, deltaT=0))
    text = str(err.value)
    assert "init='pissa': expected one of ['kaiming', 'gaussian'] for variant 'adalora'" in text
    assert "adalora.beta1=1.0: expected a number strictly between 0 and 1" in text
    assert "adalora.deltaT=0: expected a positive integer" in text
    with pytest.raises(lorakit.ConfigError, match="adalora is set but variant='lora'"):
        lorakit.LoraConfig(adalora=dict(target_r=2))
    with pytest.raises(ValueError, match="not nn.Embedding"):
        AdaLoraAdapter(spec_for(torch.nn.Embedding(5, 4)), r=2, alpha=2)
