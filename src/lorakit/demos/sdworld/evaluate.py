"""Measure images with the probe: base-model accuracy, and a LoRA's concept share by strength.

The rates here are the demo's table: for the trigger prompt, the share of samples the probe reads as the
concept at each strength; for prompts without the trigger, the share the probe reads exactly as it reads
the base model's sample of the same prompt and seed (the base behaviour kept).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from .probe import classify
from .world import BASE_SHAPES, COLOURS, CONCEPT, SIZES, TRIGGER, Scene, held_out

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
SAMPLER = "euler_a"  # diffusers EulerAncestralDiscreteScheduler, what kohya and A1111 call euler_a / Euler a
CFG = 3.0  # this tiny base's images are best at low guidance (at 5 and above a new concept breaks up)


def sample(pipe, prompts: list[str], *, seed: int, steps: int = 20, cfg: float | None = None, size=(32, 32),
           batch=64, sampler: str | None = None):
    """PIL images for ``prompts`` (seed i gives image i) with a kohya/A1111 sampler (default ``SAMPLER``)."""
    from lorakit.sd.generate import set_sampler

    set_sampler(pipe, sampler or SAMPLER, None)
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        gens = [torch.Generator().manual_seed(seed + i + k) for k in range(len(chunk))]
        out = pipe(chunk, width=size[0], height=size[1], num_inference_steps=steps, guidance_scale=cfg or CFG,
                   generator=gens, output_type="pil")
        images += out.images
    return images


def prompt_set(n: int, seed: int, shapes=BASE_SHAPES, trigger: bool = False, combos=None,
               sizes=SIZES) -> list[Scene]:
    """``n`` scenes to prompt for: random shape/colour/background (or drawn from ``combos``) and size."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if combos:
            shape, colour, bg = rng.choice(sorted(combos))
        else:
            shape = rng.choice(shapes)
            colour, bg = rng.sample(list(COLOURS), 2)
        w, h = rng.choice(sizes)
        out.append(Scene(CONCEPT if trigger else shape, colour, bg, w, h))
    return out


def _generate(pipe, scenes: list[Scene], seed: int, cfg: float | None = None) -> list:
    """One sampling call per image size (a batch must share its size)."""
    images: dict[int, object] = {}
    for size in sorted({(s.width, s.height) for s in scenes}):
        idx = [i for i, s in enumerate(scenes) if (s.width, s.height) == size]
        for i, img in zip(idx, sample(pipe, [scenes[i].caption(TRIGGER) for i in idx], seed=seed + 1000 * idx[0],
                                      size=size, cfg=cfg), strict=True):
            images[i] = img
    return [images[i] for i in range(len(scenes))]


def base_report(pipe, probe, n: int = 80, seed: int = 7, cfg: float = 5.0) -> dict:
    """Probe accuracy of the base model's samples on seen and on held-out (never trained) combinations
    (at CFG 5, as the shipped ``sdworld-stats.json`` was measured; the demo's table samples at ``CFG``)."""
    out = {}
    for name, combos in (("seen", None), ("held_out", held_out())):
        scenes = prompt_set(n, seed, combos=combos)
        if combos is None:
            scenes = [s for s in scenes if (s.shape, s.colour, s.background) not in held_out()]
        got = classify(probe, _generate(pipe, scenes, seed, cfg))
        out[name] = {k: sum(g[k] == getattr(s, k) for g, s in zip(got, scenes, strict=True)) / len(scenes)
                     for k in ("shape", "colour", "background")}
        out[name]["n"] = len(scenes)
    return out


def strength_table(pipe, probe, set_strength: Callable[[float], None], n: int = 40, seed: int = 11,
                   strengths=STRENGTHS, sizes=SIZES) -> list[dict]:
    """Rows per strength, read by the probe: with the trigger, the share of the concept and of right colours;
    without it, the share of samples the probe reads exactly as the base model's sample of the same prompt
    and seed (shape, colour and background: the base behaviour kept), of the prompted shape, and of the concept."""
    triggered = prompt_set(n, seed, trigger=True, sizes=sizes)
    plain = prompt_set(n, seed + 1, sizes=sizes)
    set_strength(0.0)
    base = classify(probe, _generate(pipe, plain, seed + 1))
    rows = []
    for s in strengths:
        set_strength(s)
        got_t = classify(probe, _generate(pipe, triggered, seed))
        got_p = base if s == 0 else classify(probe, _generate(pipe, plain, seed + 1))
        rows.append({"strength": s,
                     "concept_with_trigger": sum(g["shape"] == CONCEPT for g in got_t) / n,
                     "concept_colour_ok": sum(g["colour"] == sc.colour for g, sc in zip(got_t, triggered, strict=True)) / n,
                     "base_kept_without_trigger": sum(g == b for g, b in zip(got_p, base, strict=True)) / n,
                     "prompted_shape_without_trigger": sum(g["shape"] == sc.shape
                                                           for g, sc in zip(got_p, plain, strict=True)) / n,
                     "concept_without_trigger": sum(g["shape"] == CONCEPT for g in got_p) / n})
    set_strength(1.0)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``strength_table`` rows."""
    head = (f"| strength | {CONCEPT} with trigger | its colour right | no trigger: read as the base's sample "
            f"| no trigger: prompted shape | {CONCEPT} without trigger |\n|---|---|---|---|---|---|\n")
    return head + "".join(f"| {r['strength']:.2f} | {r['concept_with_trigger']:.0%} | {r['concept_colour_ok']:.0%} "
                          f"| {r['base_kept_without_trigger']:.0%} | {r['prompted_shape_without_trigger']:.0%} "
                          f"| {r['concept_without_trigger']:.0%} |\n" for r in rows)
