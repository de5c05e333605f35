"""Only the trained part trains (issue 19, item 1): with ``network.train_unet_only`` the text encoders got full
gradients (clipping then scaled the LoRA update down), were stored in every checkpoint and cast to fp32.
Checked for both tasks: the clipped norm is the adapters' norm, nothing else holds a gradient, checkpoints
hold adapter tensors only, frozen parts keep their dtype and ``requires_grad`` is off outside the adapters."""

import pytest
import sd_pipes
import tiny_hf as tiny
import torch
from safetensors.torch import load_file

from lorakit.train import Callback, run
from lorakit.train.config import from_dict


class TrainedOnly(Callback):
    """Before each optimizer step: gradients exist only on the optimizer's parameters, and their norm is the
    loop's ``state.grad_norm`` (runs without clipping, so the gradients are as backward left them)."""

    def __init__(self):
        self.checked = 0

    def on_before_optimizer_step(self, state):
        trained = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
        stray = [n for n, p in state.model.named_parameters() if p.grad is not None and id(p) not in trained]
        assert not stray, f"{len(stray)} parameters outside the optimizer have gradients, e.g. {stray[:3]}"
        grads = [p.grad for g in state.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        assert state.grad_norm == pytest.approx(norm, rel=1e-5)
        self.checked += 1


def _adapter_names(names) -> list[str]:
    return [n for n in names if ".adapters." not in n and ".modules_to_save." not in n]


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1")
    return sd_pipes.save_pipeline(root / "model"), sd_pipes.save_dataset(root / "img")


@pytest.mark.parametrize("cached", [False, True], ids=["captions", "cached-text"])
def test_train_unet_only_freezes_text_encoders_and_vae(tmp_path, sd1, cached):
    model, data = sd1
    raw = sd_pipes.sd_config(tmp_path, model, data, network={"train_unet_only": True},
                            data={"cache_text_encoder_outputs": cached},
                            train={"max_steps": 2, "save_every_n_steps": 2, "max_grad_norm": None})
    raw["model"]["dtype"] = "bfloat16"
    cfg = from_dict(raw)
    check = TrainedOnly()
    result = run(cfg, [check], quiet=True)
    assert check.checked == 2
    net = result.model
    te, vae = net.text_encoders["text_encoder"], net.helpers["vae"]
    assert not any(p.requires_grad for p in (*te.parameters(), *vae.parameters()))
    assert {p.dtype for p in te.parameters()} == {torch.bfloat16}  # the frozen encoder keeps model.dtype
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and not _adapter_names(trainable) and all(n.startswith("unet.") for n in trainable)
    saved = load_file(tmp_path / "run" / "checkpoint-000002" / "trainable.safetensors")
    assert sorted(saved) == sorted(trainable)


def test_text_lora_checkpoints_and_clips_only_the_adapter(tmp_path, bert_path):
    tiny.write_jsonl(tmp_path / "train.jsonl", tiny.classification_rows())
    cfg = from_dict({"model": {"path": str(bert_path), "task": "classification", "device": "cpu"},
                     "data": {"train": str(tmp_path / "train.jsonl")},
                     "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"], "modules_to_save": ["classifier"]},
                     "train": {"output_dir": str(tmp_path / "run"), "max_steps": 3, "batch_size": 8, "lr": 1e-2,
                               "save_every": 3, "progress": False, "plot": False, "max_grad_norm": None}})
    check = TrainedOnly()
    result = run(cfg, [check], quiet=True)
    assert check.checked == 3
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert trainable and not _adapter_names(trainable)
    saved = load_file(tmp_path / "run" / "checkpoint-000003" / "trainable.safetensors")
    assert sorted(saved) == sorted(trainable)
