"""Step-time benchmarks for AdaLoRA, LoHa and LoKr on the core Llama-shaped model (train_step.build_model).

* AdaLoRA (init_r 16 -> target 8, deltaT 1: scores, budget and mask every step, orthogonality term) vs
  plain LoRA r=16, and lorakit's AdaLoRA callback vs PEFT's AdaLoraModel + update_and_allocate;
* LoHa and LoKr (r=16, all linear layers) vs PEFT's LoHa/LoKr.

All in one process with rotated rounds (benchmarks/_common.py), fp32, 2 threads, AdamW.

    .venv/bin/python benchmarks/variants_b.py [--rounds 3 --steps 2] [--small]

``--small`` uses a 2-layer, hidden-256 Llama with batch 2 x 128 (for a busy machine; same code paths).
"""

from __future__ import annotations  # noqa: I001  (_common and train_step are local modules)

import argparse
import copy

from _common import header, adamw, rotated, setup
from train_step import build_model, make_step as _make_step

import torch

TOTAL = 10_000  # a long schedule, so every timed step is in AdaLoRA's budget phase


def make_step(model, batch):
    return _make_step(model, lambda: model(input_ids=batch, labels=batch).loss)


def lorakit_adalora_step(model, batch):
    from lorakit.train import TrainState
    from lorakit.train.adalora import AdaLoraCallback

    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cb, state = AdaLoraCallback(), TrainState(model=model, optimizer=opt, total_steps=TOTAL)
    cb.on_train_begin(state)

    def step():
        loss = model(input_ids=batch, labels=batch).loss + cb.extra_loss(state)
        loss.backward()
        cb.on_before_optimizer_step(state)
        opt.step()
        state.step += 1
        cb.on_step_end(state)
        opt.zero_grad(set_to_none=True)
    return step


def peft_adalora_step(model, batch):
    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    count = [0]

    def step():
        model(input_ids=batch, labels=batch).loss.backward()  # PEFT adds the orthogonality term in forward
        opt.step()
        count[0] += 1
        model.base_model.update_and_allocate(count[0])
        opt.zero_grad(set_to_none=True)
    return step


def small_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=256, intermediate_size=704, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=2000, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).float().eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="1 gives steadier numbers on a shared, busy machine")
    args = ap.parse_args()
    setup(args.threads, heap=True)
    import peft

    import lorakit

    base = small_model() if args.small else build_model()
    batch = torch.randint(0, 2000, (2, 128)) if args.small else torch.randint(0, 8000, (4, 256))
    r = args.rank
    ada = dict(target_r=r // 2, tinit=0, tfinal=0, deltaT=1, total_step=TOTAL)

    def lk(**kw):
        return lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(r=r, alpha=2 * r, target_modules="all-linear", **kw))

    def pf(cfg):
        return peft.get_peft_model(copy.deepcopy(base), cfg)

    steps = {
        "lora": make_step(lk(), batch),
        "adalora": lorakit_adalora_step(lk(variant="adalora", adalora=ada), batch),
        "peft_adalora": peft_adalora_step(pf(peft.AdaLoraConfig(task_type="CAUSAL_LM", init_r=r, lora_alpha=2 * r,
                                                                target_modules="all-linear", **ada)), batch),
        "loha": make_step(lk(variant="loha"), batch),
        "peft_loha": make_step(pf(peft.LoHaConfig(r=r, alpha=2 * r, target_modules="all-linear")), batch),
        "lokr": make_step(lk(variant="lokr"), batch),
        "peft_lokr": make_step(pf(peft.LoKrConfig(r=r, alpha=2 * r, target_modules="all-linear")), batch),
    }
    for fn in steps.values():  # warm-up: optimizer state, first allocation
        fn()
    ms, _ = rotated(steps, rounds=args.rounds, steps=args.steps)
    print(header(args.rounds, args.steps, r, f", model {'small' if args.small else 'core (train_step.build_model)'}"))
    for name, v in ms.items():
        print(f"{name:14s}{v:10.1f} ms")
    print(f"adalora / lora         = {ms['adalora'] / ms['lora']:.3f}")
    print(f"adalora / peft_adalora = {ms['adalora'] / ms['peft_adalora']:.3f}")
    print(f"loha / peft_loha       = {ms['loha'] / ms['peft_loha']:.3f}")
    print(f"lokr / peft_lokr       = {ms['lokr'] / ms['peft_lokr']:.3f}")


if __name__ == "__main__":
    main()
