"""The text task: a Hugging Face causal LM or classifier, tokenized records, PEFT adapter out."""

from __future__ import annotations

from pathlib import Path

import torch

from ...config import ConfigError
from ...formats._io import write_json, write_safetensors
from ...train.hooks import Evaluator
from ...train.loop import model_loss
from ...train.optim import make_optimizer, param_groups
from ...train.task import Parts
from .config import RunConfig, from_dict
from .data import Batches, collate, read_records, step_plan, tokenize
from .models import evaluate, load_model, load_tokenizer, select_trainable


class TextTask:
    name = "text"

    def parse_config(self, data: dict, check_paths: bool = True) -> RunConfig:
        return from_dict(data, check_paths)

    def validate(self, data: dict) -> tuple[list[str], str]:
        try:
            cfg = from_dict(data)
        except ConfigError as exc:
            return exc.errors, ""
        return [], f"method {cfg.train.method}, task {cfg.model.task}, output {cfg.train.output_dir}"

    def build(self, cfg: RunConfig, device: torch.device) -> Parts:
        d, t = cfg.data, cfg.train
        tokenizer = load_tokenizer(cfg.model.path)
        records = read_records(d.train)[: d.limit]
        samples, labels = tokenize(records, d, tokenizer, cfg.model.task)
        held_out = {k: tokenize(read_records(path), d, tokenizer, cfg.model.task, labels)[0]
                    for k, path in (("eval", d.eval), ("test", d.test)) if path}
        model = select_trainable(load_model(cfg.model, labels), cfg)
        if t.gradient_checkpointing:
            model.config.use_cache = False
            kwargs = {"use_reentrant": False}  # non-reentrant: works when the inputs need no grad (frozen base)
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.to(device)
        pad = tokenizer.pad_token_id
        held_out = {k: _fixed_batches(v, t.batch_size, pad) for k, v in held_out.items() if v}
        return Parts(model, [model], {"tokenizer": tokenizer, "labels": labels, "samples": samples,
                                      "held_out": held_out})

    def data(self, cfg: RunConfig, parts: Parts, rank: int, world: int) -> Batches:
        t = cfg.train
        return Batches(parts.extra["samples"], t.batch_size, t.seed, cfg.data.repeats, rank, world,
                       parts.extra["tokenizer"].pad_token_id)

    def step_plan(self, cfg: RunConfig, data: Batches, world: int) -> tuple[int, int, str]:
        t = cfg.train
        per_epoch, total = step_plan(data.items, t.batch_size, t.grad_accum, world, t.epochs, t.max_steps)
        text = (f"steps = {cfg.data.repeats} repeats x {len(data.samples)} items x {t.epochs:g} epochs / "
                f"({t.batch_size} batch x {t.grad_accum} accumulation x {world} processes)")
        return per_epoch, total, text

    def param_groups(self, parts: Parts, cfg: RunConfig) -> list[dict]:
        return param_groups(parts.model, cfg.train)

    def make_optimizer(self, groups: list[dict], cfg: RunConfig, device: torch.device):
        return make_optimizer(groups, cfg.train, device)

    loss = staticmethod(model_loss)

    def callbacks(self, cfg: RunConfig, parts: Parts, data, device: torch.device) -> list:
        eval_batches = parts.extra["held_out"].get("eval")
        if not eval_batches:
            return []
        return [Evaluator(lambda m: evaluate(m, eval_batches, device), cfg.train.eval_every)]

    def export(self, parts: Parts, cfg: RunConfig, run_dir: Path, state) -> Path:
        return _save_final(parts.model, cfg, run_dir, parts.extra["tokenizer"])

    def summary(self, parts: Parts, cfg: RunConfig, device: torch.device) -> dict:
        return {"test": _test_metrics(parts.model, parts.extra["held_out"].get("test"), device)}


TASK = TextTask()


def _test_metrics(model, batches: list[dict] | None, device: torch.device) -> dict | None:
    """The trained model on the held-out test file, once (not seen by the Evaluator or callbacks)."""
    if not batches:
        return None
    with torch.no_grad():
        return {f"test_{k}": v for k, v in evaluate(model, batches, device).items()}


def _fixed_batches(samples: list[dict], size: int, pad_id: int) -> list[dict]:
    """Evaluation batches in file order, the last one possibly smaller."""
    return [collate(samples[i:i + size], pad_id) for i in range(0, len(samples), size)]


def _save_final(model, cfg: RunConfig, run_dir: Path, tokenizer) -> Path:
    import lorakit

    if cfg.train.method == "lora":
        path = lorakit.save_adapter(model, run_dir / "adapter", base_model_name_or_path=str(cfg.model.path))
        labels = getattr(model.config, "id2label", None) if cfg.model.task == "classification" else None
        if labels:  # lets predict/merge rebuild the classification head
            write_json(path / "labels.json", [labels[i] for i in range(len(labels))])
        return path
    if cfg.train.method == "head":
        path = run_dir / "head.safetensors"
        write_safetensors(path, {n: p for n, p in model.named_parameters() if p.requires_grad})
        return path
    model.save_pretrained(run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")
    return run_dir / "model"
