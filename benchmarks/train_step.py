"""Training-step benchmark: lorakit vs PEFT vs the frozen floor, in one process.

Model: LlamaConfig(8 layers, hidden 512, intermediate 1408, 8 heads, vocab 8000), batch 4 x 256,
LoRA r=16 (alpha 32) on all linear layers, fp32, 2 threads, fused AdamW.

    .venv/bin/python benchmarks/train_step.py [--rounds 6 --steps 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from _common import PeakRSS, adamw, header, paired, peak_in_subprocess, rotated, saved_bytes, setup


def build_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(num_hidden_layers=8, hidden_size=512, intermediate_size=1408, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=8000, max_position_embeddings=512)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).float().eval()  # eval: no dropout anywhere, same work for all three


def build_candidates(rank: int):
    """The three models (frozen floor, lorakit, PEFT), their step functions and injection times."""
    import peft

    import lorakit

    base = build_model()
    batch = torch.randint(0, 8000, (4, 256), generator=torch.Generator().manual_seed(0))
    floor = copy.deepcopy(base)
    for p in floor.parameters():
        p.requires_grad_(False)
    m_lk, m_pf = copy.deepcopy(base), copy.deepcopy(base)
    t = time.perf_counter()
    lorakit.inject(m_lk, lorakit.LoraConfig(r=rank, alpha=2 * rank, target_modules="all-linear"))
    inject_lk = time.perf_counter() - t
    t = time.perf_counter()
    m_pf = peft.get_peft_model(m_pf, peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    inject_pf = time.perf_counter() - t

    def floor_loss():  # the embedding output requires grad so the frozen model still builds a graph
        return floor(inputs_embeds=floor.get_input_embeddings()(batch).requires_grad_(), labels=batch).loss

    models = {"floor": floor, "lorakit": m_lk, "peft": m_pf}
    losses = {"floor": floor_loss, "lorakit": lambda: m_lk(input_ids=batch, labels=batch).loss,
              "peft": lambda: m_pf(input_ids=batch, labels=batch).loss}
    steps = {name: make_step(models[name], losses[name]) for name in models}
    return models, losses, steps, {"lorakit": inject_lk, "peft": inject_pf}


def make_step(model, loss_fn):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, lr=1e-4) if params else None

    def step():
        loss_fn().backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--peak-of", help=argparse.SUPPRESS)
    args = ap.parse_args()
    setup(2, heap=not args.peak_of)
    if args.peak_of:  # child mode: one warm-up step, then the peak RSS of one more step
        _, _, steps, _ = build_candidates(args.rank)
        steps[args.peak_of]()
        with PeakRSS() as p:
            steps[args.peak_of]()
        print(p.peak)
        return

    models, losses, steps, inject_s = build_candidates(args.rank)
    for fn in steps.values():  # warm-up (allocates optimizer state)
        fn()
    saved = {name: saved_bytes(losses[name], models[name]) / 2**20 for name in models}
    mem = {name: statistics.median(peak_in_subprocess(__file__, name, "--rank", str(args.rank)) for _ in range(3))
           / 2**20 for name in models}
    ms, rounds = rotated(steps, rounds=args.rounds, steps=args.steps)
    print(header(args.rounds, args.steps, args.rank))
    print(f"{'':10s}{'step ms':>10s}{'peak MiB':>10s}{'saved activations MiB':>24s}")
    for name in models:
        print(f"{name:10s}{ms[name]:10.1f}{mem[name]:10.1f}{saved[name]:24.1f}")
    print(f"lorakit / floor = {ms['lorakit'] / ms['floor']:.3f}   (goal <= 1.10; per-round {paired(rounds, 'lorakit', 'floor')})")
    print(f"lorakit / peft  = {ms['lorakit'] / ms['peft']:.3f}   (goal <= 0.90; per-round {paired(rounds, 'lorakit', 'peft')})")
    print(f"peft / floor    = {ms['peft'] / ms['floor']:.3f}   (per-round {paired(rounds, 'peft', 'floor')})")
    print(f"peak memory lorakit / peft = {mem['lorakit'] / mem['peft']:.3f}   (goal <= 1.00)")
    print(f"injection: lorakit {1e3 * inject_s['lorakit']:.1f} ms, peft {1e3 * inject_s['peft']:.1f} ms, "
          f"ratio {inject_s['lorakit'] / inject_s['peft']:.3f}   (goal <= 0.5)")


if __name__ == "__main__":
    main()
