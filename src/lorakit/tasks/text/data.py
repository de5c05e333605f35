"""Training data: read text/JSONL/CSV files, tokenise, mask prompts, pack or pad, and shard batches.

Samples are dicts ``{"input_ids": [...], "labels": [...] | int}``. For causal LM ``labels`` is
``-100`` where no loss is taken (prompt tokens, padding). The batch order is a function of
``(seed, epoch)`` alone, so a resumed run (or another rank) computes the same order without state.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ...train.checks import MAX_EPOCH_SAMPLES
from .config import DataArgs

IGNORE = -100
DEFAULT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
PROMPT_KEYS = ("prompt", "instruction", "question")
RESPONSE_KEYS = ("response", "output", "completion", "answer")


def read_records(path: str | Path) -> list:
    """A ``.txt`` file gives one string per blank-line-separated block; ``.jsonl`` dicts; ``.csv`` rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i} is not valid JSON ({exc}); expected one JSON object per line.") from exc
        return records
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix in (".txt", ".md", ""):
        blocks = path.read_text(encoding="utf-8").split("\n\n")
        return [b.strip() for b in blocks if b.strip()]
    raise ValueError(f"{path}: unsupported data file type {suffix!r}; expected .txt, .jsonl or .csv.")


def detect_format(records: list, args: DataArgs, task: str) -> str:
    if args.format != "auto":
        return args.format
    if task == "classification":
        return "classification"
    first = records[0] if records else ""
    if isinstance(first, dict) and ("messages" in first or any(k in first for k in PROMPT_KEYS)):
        return "instruction"
    return "jsonl" if isinstance(first, dict) else "text"


def _field(record, key: str, where: str):
    if not isinstance(record, dict) or key not in record:
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where}: no {key!r} field (found {found}); set data.text_field / data.label_field.")
    return record[key]


# -- instruction rendering ---------------------------------------------------------------------------
def render_instruction(record: dict, tokenizer, template: str | None) -> tuple[str, str]:
    """(prompt text, response text). Loss is taken on the response only (the last assistant turn)."""
    if "messages" in record:
        messages = record["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError("a chat record's last message must have role 'assistant' (the trained response).")
        if template is not None or not getattr(tokenizer, "chat_template", None):
            history = "\n".join(f"{m['role']}: {m['content']}" for m in messages[:-1])
            return (template or DEFAULT_TEMPLATE).format(prompt=history, input=""), messages[-1]["content"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the tokenizer's chat template does not render the conversation as prompt + response; "
                             "set data.prompt_template instead.")
        return prompt, full[len(prompt):]
    prompt = next((record[k] for k in PROMPT_KEYS if k in record), None)
    response = next((record[k] for k in RESPONSE_KEYS if k in record), None)
    if prompt is None or response is None:
        raise ValueError(f"instruction record needs one of {PROMPT_KEYS} and one of {RESPONSE_KEYS} "
                         f"(or 'messages'); found keys {sorted(record)}.")
    extra = record.get("input", "")
    if template is None and getattr(tokenizer, "chat_template", None):
        user = f"{prompt}\n\n{extra}" if extra else prompt
        return render_instruction({"messages": [{"role": "user", "content": user},
                                                {"role": "assistant", "content": response}]}, tokenizer, None)
    text = (template or DEFAULT_TEMPLATE)
    if extra and "{input}" not in text:
        prompt = f"{prompt}\n\n{extra}"
    return text.format(prompt=prompt, input=extra), response


def _ids(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=special)["input_ids"] if texts else []


def tokenize(records: list, args: DataArgs, tokenizer, task: str, labels: list | None = None):
    """Tokenised samples and the label names (classification)."""
    fmt = detect_format(records, args, task)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    n = args.max_length
    if fmt == "classification":
        texts = [str(_field(r, args.text_field, f"record {i}")) for i, r in enumerate(records)]
        raw = [_field(r, args.label_field, f"record {i}") for i, r in enumerate(records)]
        labels = labels or sorted({str(v) for v in raw}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
        index = {name: i for i, name in enumerate(labels)}
        unknown = sorted({str(v) for v in raw} - set(index))
        if unknown:
            raise ValueError(f"labels {unknown[:10]} are not in the training labels {labels[:20]}.")
        enc = tokenizer(texts, truncation=True, max_length=n)["input_ids"]
        return [{"input_ids": ids, "labels": index[str(v)]} for ids, v in zip(enc, raw, strict=True)], labels
    if fmt == "instruction":
        pairs = [render_instruction(r, tokenizer, args.prompt_template) for r in records]
        # prompt and response are tokenised apart, so the mask boundary is exact by construction
        prompts = _ids(tokenizer, [p for p, _ in pairs], True)
        responses = _ids(tokenizer, [r for _, r in pairs], False)
        # the response must end in EOS so the model learns to stop (chat templates often add it already)
        responses = [r if r[-1:] == eos else r + eos for r in responses]
        samples = [{"input_ids": (p + r)[:n], "labels": ([IGNORE] * len(p) + r)[:n]}
                   for p, r in zip(prompts, responses, strict=True)]
    else:
        texts = [r if isinstance(r, str) else str(_field(r, args.text_field, f"record {i}"))
                 for i, r in enumerate(records)]
        samples = [{"input_ids": (ids + eos)[:n], "labels": (ids + eos)[:n]} for ids in _ids(tokenizer, texts, True)]
    if args.packing:
        samples = pack(samples, n)
    return samples, None


def pack(samples: list[dict], block: int) -> list[dict]:
    """Concatenate every sample and cut blocks of exactly ``block`` tokens (the tail is dropped)."""
    ids = [t for s in samples for t in s["input_ids"]]
    lab = [t for s in samples for t in s["labels"]]
    if len(ids) < block:
        raise ValueError(f"packing needs at least data.max_length={block} tokens; the data has {len(ids)}. "
                         "Lower data.max_length or set data.packing: false.")
    return [{"input_ids": ids[i:i + block], "labels": lab[i:i + block]} for i in range(0, len(ids) - block + 1, block)]


def collate(samples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sample of the batch (right padding; padding takes no loss)."""
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    seq_labels = isinstance(samples[0]["labels"], list)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long) if seq_labels else \
        torch.tensor([s["labels"] for s in samples], dtype=torch.long)
    for i, s in enumerate(samples):
        k = len(s["input_ids"])
        ids[i, :k] = torch.tensor(s["input_ids"])
        mask[i, :k] = 1
        if seq_labels:
            labels[i, :k] = torch.tensor(s["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class Batches:
    """Deterministic, sharded micro-batches: epoch ``e`` uses the permutation seeded by ``seed + e``.

    Each global micro-batch holds ``batch_size * world`` samples; rank ``r`` takes its contiguous
    slice, so N processes with batch b see exactly the samples one process with batch N*b sees.
    The incomplete last global batch is dropped (every rank must take the same number of steps).
    """

    samples: list[dict]
    batch_size: int
    seed: int
    repeats: int = 1
    rank: int = 0
    world: int = 1
    pad_id: int = 0

    @property
    def items(self) -> int:
        return len(self.samples) * self.repeats

    def __len__(self) -> int:
        """Micro-batches per epoch."""
        return self.items // (self.batch_size * self.world)

    def step_layout(self, accum: int) -> dict:
        """Step s reads samples [s·n, (s+1)·n) of the epoch's order, n = batch x processes x accumulation."""
        return {"samples_per_step": self.batch_size * self.world * accum}

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        return [i % len(self.samples) for i in torch.randperm(self.items, generator=g).tolist()]

    def epoch(self, epoch: int, start: int = 0):
        """Yield this rank's micro-batches of ``epoch`` from micro-batch ``start`` on."""
        order, g = self.order(epoch), self.batch_size * self.world
        for b in range(start, len(self)):
            lo = b * g + self.rank * self.batch_size
            yield collate([self.samples[i] for i in order[lo:lo + self.batch_size]], self.pad_id)


def step_plan(items: int, batch: int, accum: int, world: int, epochs: float, max_steps: int | None):
    """(steps per epoch, total steps) with steps = repeats x items x epochs / (batch x accum x processes)."""
    if items > MAX_EPOCH_SAMPLES:  # each sample of an epoch is an index of its shuffle
        raise ValueError(f"{items:,} samples per epoch (samples x data.repeats); at most {MAX_EPOCH_SAMPLES:,} are "
                         "supported; lower data.repeats.")
    per_epoch = items // (batch * world * accum)
    if per_epoch < 1:
        raise ValueError(f"{items} samples (x repeats) are fewer than one optimizer step needs "
                         f"(batch {batch} x accumulation {accum} x {world} processes = {batch * accum * world}); "
                         "lower train.batch_size or train.grad_accum, or raise data.repeats.")
    total = max_steps if max_steps is not None else max(1, math.ceil(epochs * per_epoch))
    return per_epoch, total
