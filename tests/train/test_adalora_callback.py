"""AdaLoRA's rank allocator against PEFT's AdaLoraModel.update_and_allocate on the same model, weights and batches."""

import copy

import peft
import pytest
import torch
from _loop import batches, lm_loss, train
from models import build, example_input, run

import lorakit
from lorakit.train.adalora import AdaLoraCallback, export_as_lora, rank_pattern

TARGETS = ["q_proj", "v_proj", "down_proj"]
SCHEDULE = dict(target_r=2, tinit=2, tfinal=3, deltaT=2, total_step=14, beta1=0.85, beta2=0.85, orth_reg_weight=0.3)


def _pair(seed=0):
    base = build("llama", seed)
    pm = peft.get_peft_model(copy.deepcopy(base), peft.AdaLoraConfig(task_type="CAUSAL_LM", init_r=6, lora_alpha=8, target_modules=TARGETS,
                                                                     **SCHEDULE))
    lk = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(variant="adalora", r=6, alpha=8,
                                                               target_modules=TARGETS, adalora=dict(SCHEDULE)))
    g = torch.Generator().manual_seed(seed + 7)
    theirs = {}
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad:  # E starts non-zero so P and Q get gradients from step 1
                p.copy_(torch.randn(p.shape, generator=g) * (0.1 if "lora_E" in n else 0.3))
                path, _, param = n[len("base_model.model."):-len(".default")].rpartition(".")
                theirs[(path, param)] = p
        for path, layer in lorakit.lora_layers(lk):
            for pname, p in layer.adapters["default"].named_parameters():
                p.copy_(theirs[(path, pname)])
    return pm, lk


def test_rank_allocation_matches_peft():
    pm, lk = _pair()
    data = batches(SCHEDULE["total_step"])
    opt_p = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.05)
    pm.train()
    peft_E, peft_patterns = [], []
    for t, ids in enumerate(data, start=1):
        pm(input_ids=ids, labels=ids).loss.backward()  # PEFT adds the orthogonality term inside forward
        opt_p.step()
        pm.base_model.update_and_allocate(t)
        opt_p.zero_grad()
        peft_E.append({n[len("base_model.model."):-len(".lora_E.default")]: p.detach().clone()
                       for n, p in pm.named_parameters() if "lora_E" in n})
        rp = pm.peft_config["default"].rank_pattern
        peft_patterns.append({k.replace(".lora_E.default", "").replace(".lora_E", ""): v
                              for k, v in (rp or {}).items()})

    ours_E, ours_patterns = [], []

    def observe(state):
        ours_E.append({p: ly.adapters["default"].lora_E.detach().clone() for p, ly in lorakit.lora_layers(lk)})
        ours_patterns.append(dict(lk.lorakit_configs["default"].adalora.rank_pattern or {}))

    opt_l = torch.optim.SGD([p for p in lk.parameters() if p.requires_grad], lr=0.05)
    train(lk, [AdaLoraCallback()], data, lm_loss, opt_l, after_step=observe)
    for t in range(len(data)):
        assert ours_patterns[t] == peft_patterns[t], f"rank pattern differs after step {t + 1}"
        for path, e in peft_E[t].items():
            assert torch.allclose(ours_E[t][path], e, atol=1e-5), f"λ of {path} differs after step {t + 1}: {(ours_E[t][path] - e).abs().max()}"
    final = ours_patterns[-1]
    assert sum(sum(m) for m in final.values()) == SCHEDULE["target_r"] * len(final)  # budget reached
    assert any(sum(m) != SCHEDULE["target_r"] for m in final.values()), "allocation should be uneven here"


def test_budget_schedule_is_cubic():
    cb = AdaLoraCallback()
    cb.cfg = lorakit.config.AdaLoraConfig(target_r=2, tinit=10, tfinal=20, total_step=110, deltaT=5)
    cb.init_budget, cb.target_budget = 36, 12
    assert cb.budget(10) == (36, False) and cb.budget(91) == (12, True)
    for t in (11, 15, 50, 89, 90):
        expected = int(12 + 24 * (1 - (t - 10) / 80) ** 3)
        assert cb.budget(t) == (expected, t % 5 == 0)


def test_export_as_lora_is_exact_and_saves(tmp_path):
    _, lk = _pair()
    train(lk, [AdaLoraCallback()], batches(SCHEDULE["total_step"]), lm_loss,
          torch.optim.SGD([p for p in lk.parameters() if p.requires_grad], lr=0.05))
    lk.eval()
    x = example_input("llama")
    expected = run(lk, "llama", x)
    ranks = rank_pattern(lk)
    name = export_as_lora(lk)
    got = run(lk, "llama", x)
    assert torch.allclose(got, expected, atol=1e-5)
    for path, layer in lorakit.lora_layers(lk):
        if name in layer.adapters:
            assert layer.adapters[name].r == ranks[path]
    lorakit.save_adapter(lk, tmp_path, name)
    fresh = lorakit.load_adapter(build("llama"), tmp_path)
    assert torch.allclose(run(fresh, "llama", x), expected, atol=1e-5)


def test_callback_refuses_plain_lora_and_missing_total():
    model = lorakit.inject(build("llama"), lorakit.LoraConfig(target_modules=TARGETS))
    with pytest.raises(ValueError, match="variant='adalora'"):
        train(model, [AdaLoraCallback()], batches(1), lm_loss, torch.optim.SGD(model.parameters(), lr=0.1))
    model = lorakit.inject(build("llama"), lorakit.LoraConfig(variant="adalora", r=4, target_modules=TARGETS,
                                                             adalora=dict(target_r=2, tinit=5, tfinal=5)))
    with pytest.raises(lorakit.ConfigError, match="leaves no budget phase"):
        train(model, [AdaLoraCallback()], batches(2), lm_loss, torch.optim.SGD(model.parameters(), lr=0.1))
