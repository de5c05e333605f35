"""Variant benchmarks on the core Llama-shaped model (train_step.build_model): DoRA, QLoRA, LoRA+.

* DoRA step time vs the frozen floor and vs PEFT's DoRA (use_dora=True), rotated rounds in one process;
* LoRA+ step time vs plain LoRA (same model, AdamW over LoRA+ parameter groups);
* QLoRA (NF4 + double quantisation): bytes per base linear weight, model storage and resident memory
  vs fp32, time to quantise and to dequantise every linear layer, step time vs LoRA.

    .venv/bin/python benchmarks/variants.py [--rounds 4 --steps 3 --rank 16]
"""

from __future__ import annotations  # noqa: I001  (_common and train_step are local modules)

import argparse
import copy
import gc
import json
import time

from _common import header, _status, paired, rotated, run_exact_rss, setup
from train_step import build_model, make_step

import torch


def _floor_step(model, batch):
    for p in model.parameters():
        p.requires_grad_(False)

    def step():
        emb = model.get_input_embeddings()(batch).requires_grad_()
        model(inputs_embeds=emb, labels=batch).loss.backward()
    return step


def _lm_step(model, batch):
    return make_step(model, lambda: model(input_ids=batch, labels=batch).loss)


def _loraplus_step(model, batch):
    from lorakit.loraplus import create_loraplus_optimizer

    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-4, fused=True)

    def step():
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def qlora_memory(rank: int) -> dict:
    from lorakit.quant import Linear4bit, quantize_model

    gc.collect()
    rss0 = _status("VmRSS")
    model = build_model()
    gc.collect()
    rss_fp32, bytes_fp32 = _status("VmRSS") - rss0, _model_bytes(model)
    linear_params = sum(m.weight.numel() for n, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and m is not model.lm_head)
    t = time.perf_counter()
    quantize_model(model, "nf4", double_quant=True, skip={"lm_head"})
    quant_s = time.perf_counter() - t
    gc.collect()
    rss_q, bytes_q = _status("VmRSS") - rss0, _model_bytes(model)
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    t = time.perf_counter()
    for m in layers:
        m.dequantize()
    dequant_s = time.perf_counter() - t
    per_param = sum(m.storage_bytes() for m in layers) / linear_params
    del model
    gc.collect()
    return dict(per_param=per_param, bytes_fp32=bytes_fp32, bytes_q=bytes_q, rss_fp32=rss_fp32, rss_q=rss_q,
                quant_s=quant_s, dequant_s=dequant_s, n_layers=len(layers), linear_params=linear_params)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--skip-qlora-step", action="store_true", help="QLoRA steps dequantise every matmul: slow on CPU")
    ap.add_argument("--only", default="", help="comma-separated subset of step candidates, e.g. floor,lora,dora")
    ap.add_argument("--no-memory", action="store_true", help="skip the QLoRA memory/quantise section")
    ap.add_argument("--memory-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    setup(2, heap=not args.memory_json)
    if args.memory_json:  # child mode (exact-RSS allocator): the QLoRA memory section only
        import peft  # noqa: F401  (library code resident before the baseline, as in a real process)
        import transformers  # noqa: F401

        import lorakit.quant  # noqa: F401

        print(json.dumps(qlora_memory(args.rank)))
        return
    import peft

    import lorakit

    mem = None if args.no_memory else json.loads(run_exact_rss(__file__, "--memory-json", "--rank", str(args.rank)))
    base = build_model()
    batch = torch.randint(0, 8000, (4, 256))
    cfg = dict(r=args.rank, alpha=2 * args.rank, target_modules="all-linear")

    def ours(**extra):
        return lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(**cfg, **extra))

    builders = {
        "floor": lambda: _floor_step(copy.deepcopy(base), batch),
        "lora": lambda: _lm_step(ours(), batch),
        "lora+": lambda: _loraplus_step(ours(), batch),
        "dora": lambda: _lm_step(ours(variant="dora"), batch),
        "peft-dora": lambda: _lm_step(peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
            r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear", use_dora=True)), batch),
        "qlora-nf4": lambda: _lm_step(ours(quantize="nf4"), batch),
    }
    wanted = args.only.split(",") if args.only else [n for n in builders if n != "qlora-nf4" or not args.skip_qlora_step]
    steps = {n: builders[n]() for n in wanted}
    for fn in steps.values():  # warm-up (allocates optimizer state)
        fn()
    ms, rounds = rotated(steps, rounds=args.rounds, steps=args.steps)

    print(header(args.rounds, args.steps, args.rank, " (shared machine: expect a few % noise)"))
    print(f"{'':12s}{'step ms':>10s}{'/ floor':>9s}")
    for name in steps:
        print(f"{name:12s}{ms[name]:10.1f}{ms[name] / ms['floor']:9.3f}")
    ratios = [("dora", "floor", "(goal <= 1.15)"), ("dora", "peft-dora", "(goal <= 0.80)"), ("peft-dora", "floor", ""),
              ("dora", "lora", ""), ("lora+", "lora", "(LoRA+ overhead per step)"),
              ("qlora-nf4", "lora", "(dequantise per matmul, no GPU kernel)")]
    for a, b, note in ratios:
        if a in ms and b in ms:
            print(f"{a + ' / ' + b:18s}= {ms[a] / ms[b]:.3f}   {note} per-round {paired(rounds, a, b)}")
    if mem is None:
        return
    print(f"QLoRA NF4+DQ: {mem['per_param']:.4f} bytes per base linear weight (goal <= 0.52) over "
          f"{mem['n_layers']} layers / {mem['linear_params'] / 1e6:.1f}M weights")
    print(f"  model storage fp32 {mem['bytes_fp32'] / 2**20:.1f} MiB -> {mem['bytes_q'] / 2**20:.1f} MiB "
          f"({mem['bytes_q'] / mem['bytes_fp32']:.3f}x; embeddings and lm_head stay fp32)")
    print(f"  resident memory  fp32 {mem['rss_fp32'] / 2**20:.1f} MiB -> {mem['rss_q'] / 2**20:.1f} MiB "
          f"({mem['rss_q'] / mem['rss_fp32']:.3f}x)")
    print(f"  quantise {1e3 * mem['quant_s']:.0f} ms, dequantise all layers {1e3 * mem['dequant_s']:.0f} ms")


if __name__ == "__main__":
    main()
