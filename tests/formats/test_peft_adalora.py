"""PEFT's ADALORA adapter directory (trimmed to the kept triplets + rank_pattern masks), both directions."""

import copy
import json
import sys
import warnings
from pathlib import Path

import peft
import torch
from contract import randomize_trainable
from models import build, example_input, run

import lorakit
from lorakit.train.adalora import AdaLoraCallback

sys.path.insert(0, str(Path(__file__).parent.parent / "train"))
from _loop import batches, lm_loss, train  # noqa: E402

TARGETS = ["q_proj", "v_proj"]
SCHEDULE = dict(target_r=2, tinit=1, tfinal=2, deltaT=1, total_step=6)




def test_lorakit_to_peft(tmp_path):
    base = build("llama")
    lk = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(variant="adalora", r=4, alpha=8, target_modules=TARGETS,
                                                               adalora=dict(SCHEDULE)))
    randomize_trainable(lk, seed=5)
    train(lk, [AdaLoraCallback()], batches(6), lm_loss, torch.optim.SGD([p for p in lk.parameters() if p.requires_grad],
                                                                        lr=0.05))
    lk.eval()
    lorakit.save_adapter(lk, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "ADALORA" and cfg["init_r"] == 4 and cfg["target_r"] == 2
    kept = {k: sum(v) for k, v in cfg["rank_pattern"].items()}
    assert sum(kept.values()) == 2 * 4, kept  # target budget: target_r x 4 layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    x = example_input("llama")
    with torch.no_grad():
        assert torch.allclose(run(pm, "llama", x), run(lk, "llama", x), atol=1e-5)
    reloaded = lorakit.load_adapter(copy.deepcopy(base), tmp_path)  # trimmed layers, scale alpha/init_r
    assert torch.allclose(run(reloaded, "llama", x), run(lk, "llama", x), atol=1e-5)


def test_peft_to_lorakit(tmp_path):
    base = build("llama")
    pm = peft.get_peft_model(copy.deepcopy(base), peft.AdaLoraConfig(task_type="CAUSAL_LM", init_r=4, lora_alpha=8,
                                                                      target_modules=TARGETS, **SCHEDULE))
    randomize_trainable(pm, seed=5)
    opt = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.05)
    for t, ids in enumerate(batches(6), start=1):
        pm(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        pm.base_model.update_and_allocate(t)
        opt.zero_grad()
    pm.eval()
    pm.save_pretrained(tmp_path)
    lk = lorakit.load_adapter(copy.deepcopy(base), tmp_path)
    ada = lk.lorakit_configs["default"].adalora
    assert ada.target_r == 2 and ada.rank_pattern and lk.lorakit_configs["default"].r == 4
    for path, layer in lorakit.lora_layers(lk):
        assert layer.adapters["default"].r == sum(ada.rank_pattern[path])
    x = example_input("llama")
    with torch.no_grad():
        assert torch.allclose(run(lk, "llama", x), run(pm, "llama", x), atol=1e-5)
