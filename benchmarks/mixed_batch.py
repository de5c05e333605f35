"""Mixed-adapter batches: lorakit.per_row vs the base model and vs PEFT's ``adapter_names``.

Llama-shaped model (hidden 512, 4 layers, intermediate 1376), LoRA of rank 8..16 on every linear
layer, 128 rows; 1/8/32/128 adapters assigned uniformly or Zipf(1.5), 25% base rows, shuffled.
Prefill: 64 tokens per row, no cache. Decode: one token per row on a 64-token KV cache.
Every cell checks logits first: lorakit vs PEFT <= 1e-4 (strength 1), base rows vs the base model <= 1e-6.

    flock /tmp/lorakit-heavy.lock python benchmarks/mixed_batch.py [--rounds 3] [--kernels]

``--kernels`` also times each stacked kernel forced (gather-bmm, segments, dense-masked, padded groups) to check the automatic
choice (``lorakit.multi._choose``): in every decode cell, and in prefill at 1 and 32 uniform adapters.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(__file__))

from _common import header, paired, rotated, setup  # noqa: E402

import lorakit  # noqa: E402

RANKS = list(range(8, 17))


def build(n_adapters: int, seed: int = 0):
    """(base, PEFT model, lorakit model) sharing base weights and the same random adapters."""
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256)
    base = LlamaForCausalLM(cfg).eval()
    configs = {f"a{i}": dict(r=RANKS[i % len(RANKS)], alpha=16) for i in range(n_adapters)}
    pm = None
    for name, c in configs.items():
        pc = peft.LoraConfig(r=c["r"], lora_alpha=c["alpha"], target_modules="all-linear")
        if pm is None:
            pm = peft.get_peft_model(copy.deepcopy(base), pc, adapter_name=name)
        else:
            pm.add_adapter(name, pc)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    lk = copy.deepcopy(base)
    for name, c in configs.items():
        lorakit.inject(lk, lorakit.LoraConfig(r=c["r"], alpha=c["alpha"], target_modules="all-linear"), name,
                       activate=False, init=False)
    with torch.no_grad():
        for path, layer in lorakit.lora_layers(lk):
            theirs = pm.base_model.model.get_submodule(path)
            for name, adapter in layer.adapters.items():
                adapter.lora_A.copy_(theirs.lora_A[name].weight)
                adapter.lora_B.copy_(theirs.lora_B[name].weight)
    return base, pm.eval(), lk.eval()


def assignment(rows: int, n_adapters: int, dist: str, rng) -> list[str | None]:
    """25% base rows; the rest uniform or Zipf(1.5) over the adapters; shuffled."""
    n_base = rows // 4
    if dist == "uniform":
        picks = rng.integers(0, n_adapters, rows - n_base)
    else:
        p = np.arange(1, n_adapters + 1, dtype=float) ** -1.5
        picks = rng.choice(n_adapters, rows - n_base, p=p / p.sum())
    out = [f"a{i}" for i in picks] + [None] * n_base
    rng.shuffle(out)
    return out


def _cache_kw(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def trim(cache, length: int) -> None:
    """Drop what a decode step appended (negative crop: supported by old and new transformers)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def check(base, pm, lk, ids, rows) -> tuple[float, float]:
    with torch.inference_mode():
        ref = base(ids).logits
        theirs = pm(ids, adapter_names=[r or "__base__" for r in rows]).logits
        with lorakit.per_row(lk, rows):
            ours = lk(ids).logits
    base_rows = [i for i, r in enumerate(rows) if r is None]
    return (ours - theirs).abs().max().item(), (ours[base_rows] - ref[base_rows]).abs().max().item()


def candidates(base, pm, lk, ids, step, cache, rows, tokens: int, kernels: bool) -> dict[str, dict]:
    """{phase: {candidate: callable}} for one cell; decode steps trim the shared cache back after each call."""
    kw = _cache_kw(base)
    peft_rows = [r or "__base__" for r in rows]

    def decode(model, **extra):
        model(step, **{kw: cache}, **extra)
        trim(cache, tokens)

    def ours(x, algorithm=None, **extra):
        with lorakit.per_row(lk, rows, algorithm=algorithm):
            out = lk(x, **extra)
        trim(cache, tokens)
        return out

    phases = {"prefill": {"base": lambda: base(ids, use_cache=False), "lorakit": lambda: ours(ids, use_cache=False),
                          "PEFT": lambda: pm(ids, adapter_names=peft_rows, use_cache=False)},
              "decode": {"base": lambda: decode(base), "lorakit": lambda: ours(step, **{kw: cache}),
                         "PEFT": lambda: decode(pm, adapter_names=peft_rows)}}
    for algo in ("gather", "segment", "dense", "padded") if kernels else ():
        phases["prefill"][algo] = lambda a=algo: ours(ids, a, use_cache=False)
        phases["decode"][algo] = lambda a=algo: ours(step, a, **{kw: cache})
    return phases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--adapters", default="1,8,32,128")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--decode-steps", type=int, default=5)
    ap.add_argument("--kernels", action="store_true")
    ap.add_argument("--phases", default="prefill,decode", help="comma-separated subset of prefill,decode")
    args = ap.parse_args()
    setup(heap=True)
    counts = [int(c) for c in args.adapters.split(",")]
    base, pm, lk = build(max(counts))
    rng = np.random.default_rng(0)
    ids = torch.randint(0, 4096, (args.rows, args.tokens), generator=torch.Generator().manual_seed(0))
    step = ids[:, -1:]
    print(header(args.rounds, args.steps, extra=f"; {args.rows} rows x {args.tokens} tokens, ranks 8-16, "
                 "all linear layers, 25% base rows"))
    print("| phase | adapters | assignment | base ms | lorakit ms | PEFT ms | lorakit/base | PEFT/lorakit |"
          " max err vs PEFT | base rows err |" + (" gather ms | segment ms | dense ms | padded ms |" if args.kernels else ""))
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if args.kernels else ""))
    with torch.inference_mode():
        out = base(ids, use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
    for n in counts:
        for dist in ("uniform", "zipf") if n > 1 else ("uniform",):
            rows = assignment(args.rows, n, dist, rng)
            err, base_err = check(base, pm, lk, ids, rows)
            # forced kernels: every decode cell, prefill at 1 and 32 uniform adapters (prefill is the slow part)
            kernels = args.kernels and (dist == "uniform" and n in (1, 32))
            phases = candidates(base, pm, lk, ids, step, cache, rows, args.tokens, args.kernels)
            if args.kernels and not kernels:
                phases["prefill"] = {k: v for k, v in phases["prefill"].items() if k not in ("gather", "segment", "dense", "padded")}
            for phase, cands in phases.items():
                if phase not in args.phases.split(","):
                    continue
                steps = args.steps if phase == "prefill" else args.decode_steps
                with torch.inference_mode():
                    med, per = rotated(cands, args.rounds, steps)
                extra = "".join(f" {med[k]:.1f} |" if k in med else " – |" for k in ("gather", "segment", "dense", "padded")
                                if args.kernels)
                print(f"| {phase} | {n} | {dist} | {med['base']:.1f} | {med['lorakit']:.1f} | {med['PEFT']:.1f} | "
                      f"{paired(per, 'lorakit', 'base')} | {paired(per, 'PEFT', 'lorakit')} | {err:.1e} | "
                      f"{base_err:.1e} |{extra}", flush=True)


if __name__ == "__main__":
    main()
