"""Training throughput on the quickstart task: ``lorakit.train.run`` vs PEFT + a plain PyTorch loop.

Both train all-MiniLM-L6-v2 as an intent classifier with LoRA r=8 (alpha 16) on query/value plus the
classifier head, on the same quickstart data (examples/quickstart.yaml), batch 16, AdamW, linear
schedule with warmup, grad-norm clipping 1.0, fp32, 2 threads, for the same number of steps over the
very same batches (lorakit's tokenisation, permutation and padding feed both). Only the training loop
is timed (samples/s); model loading and tokenisation are not. Rounds rotate the order.

    .venv/bin/python benchmarks/train_throughput.py [--rounds 3 --steps 40]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import adamw, setup

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # benchmark the tree this file is in

import torch


def lorakit_run(configs: dict, out: Path, steps: int, rnd: int) -> float:
    from lorakit.train import run
    from lorakit.train.config import from_dict

    raw = dict(configs["lora"])
    raw["train"] = {**raw["train"], "max_steps": steps, "output_dir": str(out / f"lorakit-{rnd}"),
                    "progress": False, "plot": False, "keep_heap": False}  # BENCH_HEAP rules both loops
    raw["data"] = {**raw["data"], "eval": None, "test": None}
    return run(from_dict(raw), quiet=True).summary["samples_per_s"]


def peft_run(configs: dict, steps: int, rnd: int) -> float:
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    from lorakit.tasks.text.data import Batches, read_records, tokenize
    from lorakit.train.config import from_dict, resolve_path

    cfg = from_dict(configs["lora"])
    t, lc = cfg.train, cfg.lora
    path = str(resolve_path(cfg.model.path))
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # the very batches lorakit's run sees (same tokenisation, permutation and padding), so both do the same work
    samples, labels = tokenize(read_records(cfg.data.train), cfg.data, tok, "classification")
    batches = Batches(samples, t.batch_size, t.seed, pad_id=tok.pad_token_id)
    torch.manual_seed(t.seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels), local_files_only=True)
    model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, target_modules=lc.target_modules,
                                             modules_to_save=lc.modules_to_save))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, lr=t.lr, weight_decay=t.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(0.06 * steps + 0.999), steps)
    model.train()
    samples_seen, start = 0, time.perf_counter()
    stream = (batch for epoch in itertools.count() for batch in batches.epoch(epoch))
    for _ in range(steps):
        batch = next(stream)
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        samples_seen += batch["input_ids"].shape[0]
    return samples_seen / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    setup(threads=2, heap=True)
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    transformers.logging.set_verbosity_error()
    from lorakit.tasks.text.quickstart import prepare

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        configs, info, _ = prepare(output_dir=out)
        candidates = {"lorakit train": lambda r: lorakit_run(configs, out, args.steps, r),
                      "peft + torch loop": lambda r: peft_run(configs, args.steps, r)}
        names = list(candidates)
        per: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for n in names[r % 2:] + names[: r % 2]:
                per[n].append(candidates[n](r))
                print(f"round {r}: {n:18s} {per[n][-1]:7.1f} samples/s", flush=True)
    med = {n: statistics.median(v) for n, v in per.items()}
    print(f"\nquickstart LoRA training, {info['train']} sentences, batch 16, {args.steps} steps x {args.rounds} rounds")
    for n in names:
        print(f"  {n:18s} {med[n]:7.1f} samples/s (median)")
    print(f"  lorakit / peft     {med['lorakit train'] / med['peft + torch loop']:.2f}x")


if __name__ == "__main__":
    main()
