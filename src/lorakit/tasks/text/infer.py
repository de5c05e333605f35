"""Using trained adapters: predict (classification), generate (causal LM), merge into a plain model.

A classification adapter written by ``lorakit train`` carries ``labels.json`` (the label names, in
class-index order), which is how these functions know the task and the head size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import ModelArgs
from .models import load_model, load_tokenizer, resolve_path

LABELS_FILE = "labels.json"


def _labels(adapters: list[tuple[str, float]], base: str) -> list[str] | None:
    for path, _ in adapters:
        f = Path(path) / LABELS_FILE
        if f.is_file():
            return json.loads(f.read_text())
    cfg = json.loads((resolve_path(base) / "config.json").read_text())
    if any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or []) and cfg.get("id2label"):
        return [cfg["id2label"][str(i)] for i in range(len(cfg["id2label"]))]
    return None


def load_with_adapters(base: str, adapters: list[tuple[str, float]] | None = None, task: str = "auto",
                       dtype: str = "float32"):
    """(model, tokenizer, labels): the base model with each adapter loaded and active at its strength."""
    import lorakit

    adapters = adapters or []
    labels = _labels(adapters, base) if task in ("auto", "classification") else None
    if task == "classification" and labels is None:
        raise ValueError("task 'classification' needs label names: an adapter with labels.json (written by "
                         "lorakit train) or a base model saved with id2label.")
    task = "classification" if labels is not None else "causal_lm"
    tokenizer = load_tokenizer(base)
    model = load_model(ModelArgs(path=base, task=task, dtype=dtype), labels)
    names = {}
    for i, (path, strength) in enumerate(adapters):
        name = "default" if len(adapters) == 1 else f"adapter{i}"
        lorakit.load_adapter(model, path, name, activate=False)
        names[name] = strength
    if names:
        lorakit.set_active_adapters(model, names)
    return model.eval(), tokenizer, labels


@torch.no_grad()
def predict(model, tokenizer, labels: list[str], texts: list[str], top_k: int = 1) -> list[list[tuple[str, float]]]:
    """Top-k (label, probability) per text."""
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    probs = model(**enc).logits.float().softmax(-1)
    values, index = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [[(labels[i], float(v)) for v, i in zip(vs, ix, strict=True)] for vs, ix in zip(values.tolist(), index.tolist(), strict=True)]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
             chat: bool = False) -> list[str]:
    """Greedy (temperature 0) or sampled continuations of each prompt (the new text only)."""
    out = []
    for prompt in prompts:
        if chat and getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True)
        enc = tokenizer(prompt, return_tensors="pt")
        kwargs = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        if temperature > 0:
            kwargs["temperature"] = temperature
        ids = model.generate(**enc, **kwargs)
        out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def merge_to_model(base: str, adapters: list[tuple[str, float]], out: str | Path, dtype: str = "float32") -> Path:
    """Base model + adapters (at their strengths) -> a standard Hugging Face model directory, merged."""
    import lorakit

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new output directory (nothing was written).")
    model, tokenizer, labels = load_with_adapters(base, adapters, dtype=dtype)
    plain = lorakit.merge_and_unload(model, safe=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
