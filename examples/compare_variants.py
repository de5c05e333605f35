"""Compare LoRA variants on one small task with the same data, steps and seed.

A tiny Llama (2 layers, hidden 64) is first trained in full on sequences a_{t+1} = (a_t + k) mod 32
with k in {1, 2, 3}; each variant then adapts it (adapters only, rank 4 on every linear layer) to
shifts it never saw, k in {5, 7, 11}. The model must infer k from the context. Reported: mean
training loss over the last 10 steps and next-token accuracy on 256 held-out sequences (positions
after the first two, where k is determined).

    python examples/compare_variants.py [--steps 80,150]

Each step budget gets its own table: at 80 steps the variants still differ in accuracy, at 150 most
have solved the task and differ in loss.

DoRA, QLoRA (NF4 + double quantisation) and LoRA+ rows run when this lorakit has them
(``"dora"`` in ``lorakit.adapters.VARIANTS``, ``lorakit.quant``, ``lorakit.loraplus``); otherwise the
row is skipped with a note. Runs in well under 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import time

import torch

import lorakit
from lorakit.adapters import VARIANTS
from lorakit.train import Callback, TrainState, run_callbacks
from lorakit.train.adalora import AdaLoraCallback, rank_pattern
from lorakit.train.periodic import PeriodicLoRA

VOCAB, SEQ, BATCH, RANK = 32, 24, 32, 4
PRETRAIN_SHIFTS, TASK_SHIFTS = (1, 2, 3), (5, 7, 11)


def sequences(n: int, shifts, gen: torch.Generator) -> torch.Tensor:
    start = torch.randint(0, VOCAB, (n, 1), generator=gen)
    k = torch.tensor(shifts)[torch.randint(0, len(shifts), (n, 1), generator=gen)]
    return (start + k * torch.arange(SEQ)) % VOCAB


def base_model(pretrain_steps: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(pretrain_steps):
        ids = sequences(BATCH, PRETRAIN_SHIFTS, gen)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@torch.no_grad()
def accuracy(model, shifts) -> float:
    ids = sequences(256, shifts, torch.Generator().manual_seed(99))
    model.eval()
    pred = model(input_ids=ids).logits.argmax(-1)[:, 2:-1]
    return (pred == ids[:, 3:]).float().mean().item()


def fit(model, optimizer, callbacks: list[Callback], steps: int) -> list[float]:
    """One optimizer step per batch, driving callbacks in lorakit's documented order."""
    state = TrainState(model=model, optimizer=optimizer, total_steps=steps)
    run_callbacks(callbacks, "on_train_begin", state)
    model.train()
    gen, losses = torch.Generator().manual_seed(2), []
    for _ in range(steps):
        ids = sequences(BATCH, TASK_SHIFTS, gen)
        loss = model(input_ids=ids, labels=ids).loss
        losses.append(loss.item())
        for cb in callbacks:
            extra = cb.extra_loss(state)
            loss = loss + extra if extra is not None else loss
        loss.backward()
        run_callbacks(callbacks, "on_before_optimizer_step", state)
        optimizer.step()
        state.step += 1
        run_callbacks(callbacks, "on_step_end", state)
        optimizer.zero_grad(set_to_none=True)
    run_callbacks(callbacks, "on_train_end", state)
    return losses


def adam(model, lr):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)


def variants(steps: int, lr: float):
    """name -> (LoraConfig kwargs, optimizer factory, callbacks factory) or a string saying why it is skipped."""
    common = dict(target_modules="all-linear", r=RANK, alpha=2 * RANK)
    out = {"LoRA": (common, lambda m: adam(m, lr), lambda: [])}
    if "dora" in VARIANTS:
        out["DoRA"] = ({**common, "variant": "dora"}, lambda m: adam(m, lr), lambda: [])
    else:
        out["DoRA"] = "lorakit.adapters.VARIANTS has no 'dora' in this checkout"
    if importlib.util.find_spec("lorakit.quant") is not None:
        out["QLoRA (NF4+DQ)"] = ({**common, "quantize": "nf4", "double_quant": True}, lambda m: adam(m, lr),
                                 lambda: [])
    else:
        out["QLoRA (NF4+DQ)"] = "lorakit.quant is not in this checkout"
    if importlib.util.find_spec("lorakit.loraplus") is not None:
        from lorakit.loraplus import loraplus_param_groups

        out["LoRA+ (ratio 16)"] = (common, lambda m: torch.optim.AdamW(loraplus_param_groups(m, lr / 2, 16.0),
                                                                      weight_decay=0.0), lambda: [])
    else:
        out["LoRA+ (ratio 16)"] = "lorakit.loraplus is not in this checkout"
    ada = dict(target_r=RANK, tinit=steps // 10, tfinal=steps // 5, deltaT=5, total_step=steps, orth_reg_weight=0.1)
    for mult in (1, 3):  # Λ starts at 0 and P, Q at N(0, 0.02²): AdaLoRA wants a larger lr than LoRA
        out[f"AdaLoRA 6->4 (lr x{mult})"] = ({**common, "variant": "adalora", "r": 6, "alpha": 2 * RANK,
                                             "adalora": ada}, lambda m, k=mult: adam(m, k * lr),
                                            lambda: [AdaLoraCallback()])
    out[f"PeriodicLoRA (N={steps // 3})"] = (common, lambda m: adam(m, lr), lambda: [PeriodicLoRA(steps // 3)])
    out["LoHa"] = ({**common, "variant": "loha"}, lambda m: adam(m, lr), lambda: [])
    out["LoKr"] = ({**common, "variant": "lokr"}, lambda m: adam(m, lr), lambda: [])
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="80,150", help="comma-separated step budgets, one table each")
    ap.add_argument("--pretrain-steps", type=int, default=250)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the model is tiny: more threads only add synchronisation (10x slower on 2 busy cores)
    t0 = time.perf_counter()
    base = base_model(args.pretrain_steps)
    print(f"base model: accuracy {accuracy(base, PRETRAIN_SHIFTS):.3f} on its own shifts {PRETRAIN_SHIFTS}, "
          f"{accuracy(base, TASK_SHIFTS):.3f} on the new shifts {TASK_SHIFTS} ({time.perf_counter() - t0:.0f}s)")
    rows = []
    for steps in (int(s) for s in str(args.steps).split(",")):
        table = [run_variant(base, name, spec, steps) for name, spec in variants(steps, args.lr).items()]
        print(f"\n{steps} steps per variant, batch {BATCH}, rank {RANK}, lr {args.lr}")
        print(f"{'variant':<24}{'trainable':>10}{'final loss':>12}{'accuracy':>10}{'time s':>8}")
        for r in table:
            if "skipped" in r:
                print(f"{r['variant']:<24}  skipped: {r['skipped']}")
                continue
            print(f"{r['variant']:<24}{r['trainable']:>10,}{r['loss']:>12.4f}{r['acc']:>10.3f}{r['seconds']:>8.1f}"
                  + (f"  {r['note']}" if "note" in r else ""))
        rows += [dict(r, steps=steps) for r in table]
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    return rows


def run_variant(base, name, spec, steps) -> dict:
    if isinstance(spec, str):
        return dict(variant=name, skipped=spec)
    cfg, make_opt, make_cbs = spec
    torch.manual_seed(0)
    model = lorakit.inject(copy.deepcopy(base), lorakit.LoraConfig(**cfg))
    trainable = lorakit.trainable_parameters(model).trainable
    t = time.perf_counter()
    losses = fit(model, make_opt(model), make_cbs(), steps)
    row = dict(variant=name, trainable=trainable, loss=sum(losses[-10:]) / 10, acc=accuracy(model, TASK_SHIFTS),
               seconds=time.perf_counter() - t)
    if cfg.get("variant") == "adalora":
        row["note"] = "final ranks " + ",".join(str(v) for v in rank_pattern(model).values())
    return row


if __name__ == "__main__":
    main()
