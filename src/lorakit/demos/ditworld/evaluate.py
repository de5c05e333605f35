"""Read ditworld samples with sdworld's probe: the share of triggered prompts drawn as the concept (a ring)
and of plain prompts drawn as the prompted shape, for a FLUX.1 pipeline with or without a LoRA."""

from __future__ import annotations

import torch

from ..sdworld.evaluate import prompt_set
from ..sdworld.probe import classify
from ..sdworld.world import CONCEPT, TRIGGER, Scene
from .pretrain import T5_TOKENS

CFG, STEPS = 3.0, 12  # true CFG against the empty prompt (the base saw 10% empty captions)


@torch.no_grad()
def sample(pipe, scenes: list[Scene], seed: int, steps: int = STEPS, cfg: float = CFG) -> list:
    """One image per scene (its caption, its size), image i from seed ``seed + i``; one call per size."""
    images: dict[int, object] = {}
    for size in sorted({(s.width, s.height) for s in scenes}):
        idx = [i for i, s in enumerate(scenes) if (s.width, s.height) == size]
        gens = [torch.Generator().manual_seed(seed + i) for i in idx]
        prompts = [scenes[i].caption(TRIGGER) for i in idx]
        out = pipe(prompts, negative_prompt=[""] * len(idx), true_cfg_scale=cfg, guidance_scale=1.0,
                   width=size[0], height=size[1], num_inference_steps=steps, max_sequence_length=T5_TOKENS,
                   generator=gens, output_type="pil")
        images.update(zip(idx, out.images, strict=True))
    return [images[i] for i in range(len(scenes))]


def shares(pipe, probe, n: int = 24, seed: int = 11) -> dict[str, float]:
    """{"concept": share of triggered prompts read as the concept, "shape": share of plain prompts read as
    the prompted shape, "colour": share of triggered prompts whose colour is right}."""
    triggered, plain = prompt_set(n, seed, trigger=True), prompt_set(n, seed + 1)
    got_t, got_p = classify(probe, sample(pipe, triggered, seed)), classify(probe, sample(pipe, plain, seed + 1))
    return {"concept": sum(g["shape"] == CONCEPT for g in got_t) / n,
            "colour": sum(g["colour"] == s.colour for g, s in zip(got_t, triggered, strict=True)) / n,
            "shape": sum(g["shape"] == s.shape for g, s in zip(got_p, plain, strict=True)) / n}
