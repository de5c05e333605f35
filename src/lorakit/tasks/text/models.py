"""Load local Hugging Face models and tokenizers (never from the network) and choose what trains."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .config import ModelArgs, RunConfig, resolve_path

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_dir(path: str | Path) -> Path:
    path = resolve_path(str(path))
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path}. lorakit loads local Hugging Face model "
                                "directories only (config.json, weights, tokenizer files); it never downloads.")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; expected a Hugging Face model directory "
                                f"(files there: {sorted(p.name for p in path.iterdir())[:20]}).")
    return path


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(str(_check_dir(path)), local_files_only=True)
    if tok.pad_token_id is None:  # padding positions are masked, so any existing token will do
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def load_model(args: ModelArgs, labels: list[str] | None = None, path: str | Path | None = None) -> nn.Module:
    """``AutoModelForCausalLM`` or ``AutoModelForSequenceClassification`` from a local directory."""
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = _check_dir(path or args.path)
    kwargs = dict(local_files_only=True, dtype=DTYPES[args.dtype])
    if args.task == "classification":
        if labels is None:
            raise ValueError("a classification model needs its label names (from the training data).")
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={name: i for i, name in enumerate(labels)})
        cls = transformers.AutoModelForSequenceClassification
    else:
        cls = transformers.AutoModelForCausalLM
    # a base checkpoint has no classifier yet; transformers reports it as newly initialised, which is expected
    transformers.logging.set_verbosity_error()
    return cls.from_pretrained(str(path), **kwargs)


def select_trainable(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """Apply ``train.method``: inject the LoRA adapter, unfreeze everything, or only the head modules."""
    method = cfg.train.method
    if method == "lora":
        import lorakit

        lorakit.inject(model, cfg.lora)
        if cfg.lora.quantize != "none":
            _release_checkpoint(model)
    elif method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        heads = cfg.train.head_modules
        hits = [n for n, _ in model.named_modules() if any(n == h or n.endswith("." + h) for h in heads)]
        if not hits:
            raise ValueError(f"train.method='head': none of train.head_modules={heads} is a module of this model; "
                             f"top-level modules: {[n for n, _ in model.named_children()]}")
        for name in hits:
            for p in model.get_submodule(name).parameters():
                p.requires_grad_(True)
    for p in model.parameters():  # trainable weights stay fp32 under any base dtype (optimizer precision)
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


@torch.no_grad()
def _release_checkpoint(model: nn.Module) -> None:
    """After QLoRA quantisation the frozen tensors left dense (embeddings, norms, the head) are still views of the
    memory-mapped checkpoint, which keeps every page quantisation read resident (the whole fp32 model, in RSS):
    copy them, so that the mapping goes."""
    from ...quant import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            continue
        for p in module._parameters.values():
            if p is not None and not p.requires_grad:
                p.data = p.data.clone()


@torch.no_grad()
def evaluate(model: nn.Module, batches, device: torch.device) -> dict:
    """Mean loss (sample-weighted) and, for classification, accuracy."""
    model.eval()
    total = correct = 0
    loss_sum = 0.0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        n = batch["input_ids"].shape[0]
        loss_sum += float(out.loss) * n
        total += n
        if batch["labels"].dim() == 1:
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
    metrics = {"loss": loss_sum / max(total, 1)}
    if batches and batches[0]["labels"].dim() == 1:
        metrics["accuracy"] = correct / max(total, 1)
    return metrics
