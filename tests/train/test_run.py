"""End-to-end training runs on tiny local models: loss falls, classification learns, resume is exact,
NaN stops cleanly."""

import json
import math

import pytest
import tiny_hf as tiny
import torch
from safetensors.torch import load_file

from lorakit.train import Callback, NonFiniteLossError, run
from lorakit.train.checkpoint import list_checkpoints
from lorakit.train.config import from_dict


def llama_cfg(tmp_path, llama_path, **train):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "train.txt").write_text("\n\n".join(tiny.CORPUS))
    t = {"output_dir": str(tmp_path / "run"), "max_steps": 40, "batch_size": 4, "lr": 2e-2, "scheduler": "constant",
         "progress": False, "log_every": 1, "plot": False, **train}
    return from_dict({"model": {"path": str(llama_path)}, "data": {"train": str(tmp_path / "train.txt"), "max_length": 16},
                      "lora": {"r": 8, "alpha": 16, "target_modules": "all-linear"}, "train": t})


def test_causal_lm_loss_falls_on_memorisation_corpus(tmp_path, llama_path):
    result = run(llama_cfg(tmp_path, llama_path), quiet=True)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert last < 0.6 * first, (first, last)
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    s = result.summary
    assert 0 < s["trainable_params"] < s["total_params"] and s["saved_bytes"] > 0 and s["samples_per_s"] > 0


def test_classifier_learns_and_plots(tmp_path, bert_path):
    rows = tiny.classification_rows()
    tiny.write_jsonl(tmp_path / "train.jsonl", rows)
    tiny.write_jsonl(tmp_path / "eval.jsonl", rows[:8])
    test = [{**r, "label": "other" if r["label"] == "home" else "home"} for r in rows[8:14]]  # flipped: acc 0
    tiny.write_jsonl(tmp_path / "test.jsonl", test)
    cfg = from_dict({"model": {"path": str(bert_path), "task": "classification"},
                     "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl"),
                              "test": str(tmp_path / "test.jsonl")},
                     "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"], "modules_to_save": ["classifier"]},
                     "train": {"output_dir": str(tmp_path / "run"), "epochs": 12, "batch_size": 8, "lr": 2e-2,
                               "eval_every": 4, "progress": False}})
    result = run(cfg, quiet=True)
    assert result.labels == ["home", "other"]
    assert result.summary["final_eval"]["eval_accuracy"] == 1.0
    # the test file is evaluated once, on its own labels: the trained model's own predictions decide it
    enc = result.tokenizer([r["text"] for r in test], padding=True, return_tensors="pt")
    with torch.no_grad():
        pred = result.model(**enc).logits.argmax(-1).tolist()
    expected = sum(result.labels[p] == r["label"] for p, r in zip(pred, test, strict=True)) / len(test)
    assert result.summary["test"]["test_accuracy"] == pytest.approx(expected) and expected < 0.5
    assert json.loads((tmp_path / "run" / "adapter" / "labels.json").read_text()) == ["home", "other"]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            state.should_stop = True


def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(tmp_path, llama_path):
    # dropout and accumulation make the RNG and data position matter; linear schedule makes the scheduler matter
    train = dict(max_steps=8, save_every=3, grad_accum=2, batch_size=2, scheduler="linear", warmup_steps=2)
    cfg = llama_cfg(tmp_path / "b", llama_path, **train)
    cfg.lora.dropout = 0.1
    straight_cfg = llama_cfg(tmp_path / "c", llama_path, **train)
    straight_cfg.lora.dropout = 0.1
    straight = run(straight_cfg, quiet=True)
    run(cfg, callbacks=[StopAt(4)], quiet=True)  # stops after step 4; the last checkpoint is step 3
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "run")] == ["checkpoint-000003"]
    with pytest.raises(FileExistsError, match="--resume"):
        run(cfg, quiet=True)
    resumed = run(cfg, callbacks=[StopAt(-1)], resume=True, quiet=True)
    a = load_file(tmp_path / "c" / "run" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "run" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert resumed.summary["steps"] == straight.summary["steps"] == 8
    steps = [json.loads(r)["step"] for r in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 8  # rows past the checkpoint were replaced, not duplicated


class PoisonAt(Callback):
    def __init__(self, step):
        self.step = step

    def extra_loss(self, state):
        return torch.tensor(math.nan) if state.step + 1 == self.step else None


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, llama_path):
    cfg = llama_cfg(tmp_path, llama_path, max_steps=10, save_every=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss=nan at optimizer step 5.*checkpoint-000004"):
        run(cfg, callbacks=[PoisonAt(5)], quiet=True)
    ckpts = list_checkpoints(tmp_path / "run")
    assert [p.name for p in ckpts] == ["checkpoint-000002", "checkpoint-000004"]
    weights = load_file(ckpts[-1] / "trainable.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not (tmp_path / "run" / "adapter").exists()  # no final adapter from a diverged run


def test_accumulation_and_checkpointing_match_one_big_batch(tmp_path, bert_path):
    tiny.write_jsonl(tmp_path / "train.jsonl", tiny.classification_rows())

    def cfg(name, **train):
        return from_dict({"model": {"path": str(bert_path), "task": "classification"},
                          "data": {"train": str(tmp_path / "train.jsonl")},
                          "lora": {"r": 4, "target_modules": ["query", "value"], "modules_to_save": ["classifier"]},
                          "train": {"output_dir": str(tmp_path / name), "max_steps": 3, "lr": 1e-2,
                                    "progress": False, "plot": False, **train}})

    run(cfg("big", batch_size=8), quiet=True)
    run(cfg("accum", batch_size=4, grad_accum=2, gradient_checkpointing=True), quiet=True)
    a = load_file(tmp_path / "big" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "accum" / "adapter" / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_and_epoch_checkpoints(tmp_path, llama_path):
    cfg = llama_cfg(tmp_path, llama_path, max_steps=None, epochs=2, save_every_epochs=1, keep_last=1,
                    mixed_precision="bf16")
    result = run(cfg, quiet=True)
    assert math.isfinite(result.summary["final_loss"])
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-000004"]  # 2 steps/epoch, kept 1
    assert all(p.dtype == torch.float32 for p in result.model.parameters() if p.requires_grad)
