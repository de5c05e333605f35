"""LoRA+ parameter groups, checked against PEFT's create_loraplus_optimizer on the same models."""

import copy

import pytest
import torch
from models import build

import lorakit
from lorakit.loraplus import create_loraplus_optimizer, loraplus_param_groups

CASES = {
    "mlp-bias-save": ("mlp", dict(target_modules=["lin0", "lin1"], bias="all", modules_to_save=["head"])),
    "emb": ("emb", dict(target_modules=["emb", "lin"], r=4)),
    "llama-dora": ("llama", dict(target_modules=["q_proj", "v_proj"], r=4, variant="dora")),
    "gpt2-lora-only": ("gpt2", dict(target_modules=["c_attn"], r=4, bias="lora_only")),
}
PEFT_NAMES = {"r": "r", "alpha": "lora_alpha", "target_modules": "target_modules", "bias": "bias",
              "modules_to_save": "modules_to_save"}


def _peft_key(name: str) -> str:
    """PEFT's in-memory parameter name -> its file key (the names lorakit.adapter_state_dict uses)."""
    name = name.replace(".default", "").replace(".modules_to_save", "")
    return name[: -len(".weight")] if name.endswith("lora_magnitude_vector.weight") else name


def _settings(optimizer, keys: dict) -> dict:
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            out[keys[id(p)]] = (group["lr"], group["weight_decay"])
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_groups_match_peft(case):
    peft = pytest.importorskip("peft")
    from peft.optimizers import create_loraplus_optimizer as peft_loraplus

    name, cfg = CASES[case]
    base = build(name)
    ours = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(**cfg))
    pcfg = peft.LoraConfig(use_dora=cfg.get("variant") == "dora", **{PEFT_NAMES[k]: v for k, v in cfg.items()
                                                                      if k in PEFT_NAMES})
    theirs = peft.get_peft_model(copy.deepcopy(base), pcfg)
    kw = dict(lr=1e-3, weight_decay=0.01)
    opt_ours = create_loraplus_optimizer(ours, torch.optim.AdamW, ratio=8.0, lr_embedding=1e-5, **kw)
    opt_theirs = peft_loraplus(theirs, torch.optim.AdamW, loraplus_lr_ratio=8.0, loraplus_lr_embedding=1e-5,
                               loraplus_weight_decay=0.01, **kw)
    our_keys = {id(p): k for k, p in lorakit.adapter_state_dict(ours).items()}
    our_keys.update({id(p): "base_model.model." + n for n, p in ours.named_parameters()
                     if p.requires_grad and id(p) not in our_keys})
    their_keys = {id(p): _peft_key(n) for n, p in theirs.named_parameters() if p.requires_grad}
    mine, peft_side = _settings(opt_ours, our_keys), _settings(opt_theirs, their_keys)
    assert mine == peft_side
    assert len({lr for lr, _ in mine.values()}) >= 2, "LoRA+ must use more than one learning rate"


def test_b_gets_ratio_times_lr_and_a_gets_lr():
    model = lorakit.inject(build("mlp"), lorakit.LoraConfig(target_modules=["lin0"], variant="dora"))
    groups = {g["name"]: g for g in loraplus_param_groups(model, lr=2e-4)}
    adapter = model.lin0.adapters["default"]
    assert [id(p) for p in groups["A"]["params"]] == [id(adapter.lora_A)]
    assert {id(p) for p in groups["B"]["params"]} == {id(adapter.lora_B), id(adapter.magnitude)}
    assert groups["A"]["lr"] == 2e-4 and groups["B"]["lr"] == pytest.approx(16 * 2e-4)


def test_bad_arguments_are_explained():
    model = lorakit.inject(build("mlp"), lorakit.LoraConfig(target_modules=["lin0"]))
    with pytest.raises(ValueError, match="ratio > 0"):
        loraplus_param_groups(model, lr=1e-3, ratio=0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_loraplus_optimizer(build("mlp").requires_grad_(False), torch.optim.SGD, lr=1e-3)
