"""Training-step benchmark: lorakit vs PEFT vs the frozen floor, in one process.

Model: LlamaConfig(8 layers, hidden 512, intermediate 1408, 8 heads, vocab 8000), batch 4 x 256,
LoRA r=16 (alpha 32) on all linear layers, fp32, 2 threads, AdamW.

    .venv/bin/python benchmarks/train_step.py [--rounds 6 --steps 5]
"""

from __future__ import annotations

import argparse
import copy
import time

from _common import PeakRSS, rotated, setup

import torch


def build_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(num_hidden_layers=8, hidden_size=512, intermediate_size=1408, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=8000, max_position_embeddings=512)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).float().eval()  # eval: no dropout anywhere, same work for all three


def make_step(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None

    def step():
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    setup(2)
    import peft

    import lorakit

    base = build_model()
    batch = torch.randint(0, 8000, (4, 256))

    floor = copy.deepcopy(base)
    for p in floor.parameters():
        p.requires_grad_(False)
    floor.get_input_embeddings().weight.requires_grad_(False)

    m_lk, m_pf = copy.deepcopy(base), copy.deepcopy(base)
    t = time.perf_counter()
    lorakit.inject(m_lk, lorakit.LoraConfig(r=args.rank, alpha=2 * args.rank, target_modules="all-linear"))
    inject_lk = time.perf_counter() - t
    t = time.perf_counter()
    m_pf = peft.get_peft_model(m_pf, peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                                    target_modules="all-linear"))
    inject_pf = time.perf_counter() - t

    # The floor must still build a graph: let the input embedding output require grad.
    def floor_step_fn():
        emb = floor.get_input_embeddings()(batch).requires_grad_()
        floor(inputs_embeds=emb, labels=batch).loss.backward()

    steps = {"floor": floor_step_fn, "lorakit": make_step(m_lk, batch), "peft": make_step(m_pf, batch)}
    for fn in steps.values():  # warm-up (allocates optimizer state)
        fn()
    mem = {}
    for name, fn in steps.items():
        with PeakRSS() as p:
            fn()
        mem[name] = p.peak / 2**20
    ms = rotated(steps, rounds=args.rounds, steps=args.steps)
    print(f"torch {torch.__version__}, peft {peft.__version__}, threads {torch.get_num_threads()}, r={args.rank}")
    print(f"{'':10s}{'step ms':>10s}{'peak MiB':>10s}")
    for name in steps:
        print(f"{name:10s}{ms[name]:10.1f}{mem[name]:10.1f}")
    print(f"lorakit / floor = {ms['lorakit'] / ms['floor']:.3f}   (goal <= 1.10)")
    print(f"lorakit / peft  = {ms['lorakit'] / ms['peft']:.3f}   (goal <= 0.90)")
    print(f"peft / floor    = {ms['peft'] / ms['floor']:.3f}")
    print(f"peak memory lorakit / peft = {mem['lorakit'] / mem['peft']:.3f}   (goal <= 1.00)")
    print(f"injection: lorakit {1e3 * inject_lk:.1f} ms, peft {1e3 * inject_pf:.1f} ms, "
          f"ratio {inject_lk / inject_pf:.3f}   (goal <= 0.5)")


if __name__ == "__main__":
    main()
