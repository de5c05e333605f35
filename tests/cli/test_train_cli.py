"""The training commands through typer's CliRunner: validate, train, predict, merge, generate."""

import json

import tiny_hf as tiny
import torch
import yaml
from typer.testing import CliRunner

from lorakit.cli import (
    app,
    commands,  # noqa: F401  (registers the commands)
)

runner = CliRunner()

BAD = {
    "model": {"path": "/nowhere/model", "task": "regression"},
    "data": {"train": "missing.jsonl", "max_lenght": 128},
    "lora": {"r": 0, "target_modules": ["q_proj"], "alhpa": 16},
    "train": {"lr": -1, "batch_size": 0, "scheduler": "cosine_restarts", "optimiser": "adamw", "betas": [0.9]},
    "trian": {},
}


def test_validate_lists_every_error_with_key_and_fix(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(BAD))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    expected = [
        "trian: unknown section; did you mean train?",
        "model.task='regression': expected one of 'causal_lm', 'classification'.",
        "data.max_lenght: unknown key; did you mean data.max_length?",
        "lora.alhpa: unknown key; did you mean lora.alpha?",
        "lora.r=0: expected a positive integer rank",
        "train.optimiser: unknown key; did you mean train.optimizer?",
        "train.scheduler='cosine_restarts': expected one of 'constant', 'linear', 'cosine', 'cosine_with_restarts'.",
        "model.path='/nowhere/model': no config.json there",
        "data.train='missing.jsonl': file not found",
        "train.batch_size=0: expected an integer >= 1.",
        "train.lr=-1.0: expected a positive learning rate",
        "train.betas=[0.9]: expected two numbers in [0, 1)",
    ]
    for line in expected:
        assert line in out, f"missing: {line}\n{out}"
    assert f"({len(expected)} problems)" in out


def test_validate_ok_and_set_override(tmp_path, llama_path):
    (tmp_path / "t.txt").write_text("the cat sat on the mat")
    cfg = {"model": {"path": str(llama_path)}, "data": {"train": str(tmp_path / "t.txt")},
           "lora": {"r": 4}, "train": {"output_dir": str(tmp_path / "run"), "batch_size": 1}}
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(cfg))
    assert runner.invoke(app, ["validate", str(tmp_path / "ok.yaml")]).exit_code == 0
    result = runner.invoke(app, ["validate", str(tmp_path / "ok.yaml"), "--set", "train.lr=abc"])
    assert result.exit_code == 1 and "train.lr='abc': expected a number." in result.output


def test_train_predict_merge_on_a_tiny_classifier(tmp_path, bert_path):
    tiny.write_jsonl(tmp_path / "train.jsonl", tiny.classification_rows())
    cfg = {"model": {"path": str(bert_path), "task": "classification"}, "data": {"train": str(tmp_path / "train.jsonl")},
           "lora": {"r": 4, "alpha": 8, "target_modules": ["query", "value"], "modules_to_save": ["classifier"]},
           "train": {"output_dir": str(tmp_path / "run"), "epochs": 10, "batch_size": 8, "lr": 2e-2, "progress": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output
    assert "optimizer steps" in result.output and "trainable params" in result.output
    adapter = tmp_path / "run" / "adapter"
    result = runner.invoke(app, ["predict", str(bert_path), "-a", str(adapter), "turn on the kitchen light",
                                 "the cat sat on the mat"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if "kitchen" in ln or "cat sat" in ln]
    assert "home" in lines[0] and "other" in lines[1]
    merged = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(bert_path), str(adapter), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    from transformers import AutoModelForSequenceClassification

    from lorakit.tasks.text.infer import load_with_adapters

    plain = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    model, tok, labels = load_with_adapters(str(bert_path), [(str(adapter), 1.0)])
    enc = tok(["turn on the kitchen light", "the dog ate my homework"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(plain(**enc).logits, model(**enc).logits, rtol=1e-4, atol=1e-5)
    assert plain.config.id2label == {0: "home", 1: "other"}
    again = runner.invoke(app, ["merge", str(bert_path), str(adapter), "--out", str(merged)])
    assert again.exit_code == 1 and "already exists; pass --overwrite" in again.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["method"] == "lora"


def test_train_reports_missing_model_dir(tmp_path):
    (tmp_path / "t.txt").write_text("x")
    cfg = {"model": {"path": str(tmp_path / "nope")}, "data": {"train": str(tmp_path / "t.txt")}, "lora": {}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(tmp_path / "c.yaml")])
    assert result.exit_code == 1 and "no config.json there" in result.output


def test_generate_with_two_adapters_and_strengths(tmp_path, llama_path):
    import lorakit
    from lorakit.tasks.text.models import load_model

    for name in ("a1", "a2"):
        model = load_model(__import__("lorakit.tasks.text.config", fromlist=["ModelArgs"]).ModelArgs(path=str(llama_path)))
        lorakit.inject(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"], init="gaussian"))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_()
        lorakit.save_adapter(model, tmp_path / name)
    result = runner.invoke(app, ["generate", str(llama_path), "the cat", "-a", f"{tmp_path / 'a1'}:0.5",
                                 "-a", str(tmp_path / "a2"), "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    from lorakit.tasks.text.infer import load_with_adapters

    model, _, _ = load_with_adapters(str(llama_path), [(str(tmp_path / "a1"), 0.5), (str(tmp_path / "a2"), 1.0)])
    assert lorakit.active_adapters(model) == {"adapter0": 0.5, "adapter1": 1.0}
