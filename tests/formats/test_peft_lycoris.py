"""LoHa/LoKr adapter directories: lorakit <-> PEFT in both directions give the same outputs."""

import copy
import json
import warnings

import peft
import pytest
import torch
from contract import randomize_trainable
from models import build, example_input, run

import lorakit

CASES = [
    ("loha", "mlp", ["lin0", "lin1"], dict(r=4, alpha=6)),
    ("loha", "conv", ["conv", "conv_grouped", "pw"], dict(r=2, alpha=2, use_effective_conv2d=True)),
    ("lokr", "mlp", ["lin0", "lin1"], dict(r=1, alpha=3, decompose_both=True, decompose_factor=2)),
    ("lokr", "conv", ["conv", "conv_strided", "pw"], dict(r=1, alpha=2, use_effective_conv2d=True)),
    ("lokr", "llama", ["q_proj", "v_proj"], dict(r=2, alpha=4)),
]
PEFT_CONFIGS = {"loha": peft.LoHaConfig, "lokr": peft.LoKrConfig}




@pytest.mark.parametrize("variant,model_name,targets,kw", CASES)
def test_lorakit_to_peft(variant, model_name, targets, kw, tmp_path):
    base = build(model_name)
    lk = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(variant=variant, target_modules=targets, **kw))
    randomize_trainable(lk, seed=3)
    x = example_input(model_name)
    lorakit.save_adapter(lk, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == variant.upper() and cfg["r"] == kw["r"] and cfg["alpha"] == kw["alpha"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about lorakit's extra keys (created_with, bias)
        pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    with torch.no_grad():
        assert torch.allclose(run(pm, model_name, x), run(lk, model_name, x), atol=1e-5)


@pytest.mark.parametrize("variant,model_name,targets,kw", CASES)
def test_peft_to_lorakit(variant, model_name, targets, kw, tmp_path):
    base = build(model_name)
    pm = peft.get_peft_model(copy.deepcopy(base), PEFT_CONFIGS[variant](target_modules=targets, **kw))
    randomize_trainable(pm, seed=3)
    pm.save_pretrained(tmp_path)
    x = example_input(model_name)
    lk = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    assert lk.lorakit_configs["default"].variant == variant
    with torch.no_grad():
        assert torch.allclose(run(lk, model_name, x), run(pm, model_name, x), atol=1e-5)


def test_rslora_refused_with_reason(tmp_path):
    lk = lorakit.inject(build("mlp"), lorakit.LoraConfig(variant="loha", target_modules=["lin0"], use_rslora=True))
    with pytest.raises(ValueError, match="PEFT's LOHA format has no rank-stabilised scaling"):
        lorakit.save_adapter(lk, tmp_path)
