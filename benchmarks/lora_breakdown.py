"""Where a lorakit LoRA training step spends its time beyond the frozen floor.

The training-step benchmark's model and batch (train_step.py), with lorakit's fused LoRA kernel cut
back stage by stage. Each stage is timed against the floor in paired rounds (one step of every
candidate per round, order rotating), and the median of the per-round ratios is printed, which is
steadier on a noisy machine than a ratio of medians. The stages add up:

    wrapper   the LoRA layers and their autograd Function, no rank-r work, no adapter gradients
    forward   + u = x Aᵀ and y += s·u Bᵀ
    dx        + g = dy B and dx += s·g A
    full      lorakit's real kernel: + dA = s·gᵀx, dB = s·dyᵀu and the optimizer step

    .venv/bin/python benchmarks/lora_breakdown.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import header, paired, rotated, setup
from train_step import build_candidates

STAGES = ("wrapper", "forward", "dx")


class Staged(torch.autograd.Function):
    """The fused kernel's arithmetic up to ``stage``; the parts not reached are skipped."""

    @staticmethod
    def forward(ctx, x, weight, lora_a, lora_b, scale: float, stage: str):
        x2 = x.reshape(-1, x.shape[-1])
        y = x2 @ weight.t()
        if stage != "wrapper":
            y.addmm_(x2 @ lora_a.t(), lora_b.t(), alpha=scale)
        ctx.save_for_backward(weight, lora_a, lora_b)
        ctx.scale, ctx.stage, ctx.in_shape = scale, stage, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        weight, lora_a, lora_b = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = dy2 @ weight
        if ctx.stage == "dx":
            dx.addmm_(dy2 @ lora_b, lora_a, alpha=ctx.scale)
        return dx.view(ctx.in_shape), None, None, None, None, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    setup(2, heap=True)
    import lorakit.adapters.lora as lora_module

    real_kernel = lora_module.lora_linear
    stage = {"now": "full"}

    def kernel(x, weight, bias, lora_a, lora_b, scale, fan_in_fan_out=False):
        if stage["now"] == "full" or bias is not None or fan_in_fan_out:
            return real_kernel(x, weight, bias, lora_a, lora_b, scale, fan_in_fan_out)
        return Staged.apply(x, weight, lora_a, lora_b, scale, stage["now"])

    lora_module.lora_linear = kernel
    _, _, steps, _ = build_candidates(rank=16)
    floor_step, lora_step = steps["floor"], steps["lorakit"]

    def at(name):
        def step():
            stage["now"] = name
            lora_step()
        return step

    candidates = {"floor": floor_step, **{name: at(name) for name in (*STAGES, "full")}}
    for fn in candidates.values():  # warm-up (optimizer state, first allocations)
        fn()
    _, rounds = rotated(candidates, rounds=args.rounds, steps=1)
    print(header(args.rounds, 1, 16, " (paired: one step of each candidate per round)"))
    print(f"{'stage':10s}{'/ floor, median (q25–q75) of per-round ratios':>48s}{'this stage adds':>18s}")
    previous = 1.0
    for name in list(candidates)[1:]:
        med = statistics.median(a / b for a, b in zip(rounds[name], rounds["floor"], strict=True))
        print(f"{name:10s}{paired(rounds, name, 'floor'):>48s}{100 * (med - previous):+17.1f}%")
        previous = med


if __name__ == "__main__":
    main()
