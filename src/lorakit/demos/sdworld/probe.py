"""The probe: a small CNN that reads shape, colour and background off an image.

It learns from the world's ground truth only (freshly drawn scenes, rings included, plus ellipses as
"other" so a shapeless blob is not counted as any shape), with blur and noise so that the softer images a
diffusion model produces are read like drawn ones. ``accuracy`` reports it on held-out scenes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .world import COLOURS, SHAPES, SIZES, Scene, draw, random_scene, to_tensor

PROBE_SHAPES = SHAPES + ("other",)
HEADS = {"shape": PROBE_SHAPES, "colour": tuple(COLOURS), "background": tuple(COLOURS)}
SIDE = 32  # every image is resized to SIDE x SIDE before classification


class Probe(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(2), nn.Flatten())
        self.heads = nn.ModuleDict({k: nn.Linear(8 * w, len(v)) for k, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False))
        return {k: head(h) for k, head in self.heads.items()}


def _scene(rng: random.Random) -> Scene:
    centred = rng.random() < 0.7  # mostly the base model's world, sometimes shapes anywhere
    if rng.random() < 0.12:  # an ellipse labelled "other"
        sc = random_scene(rng, shapes=("circle",), centred=centred)
        return Scene("ellipse", sc.colour, sc.background, sc.width, sc.height, sc.cx, sc.cy, sc.r,
                     rng.choice((-1.0, 1.0)))
    return random_scene(rng, shapes=SHAPES, centred=centred)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random blur (down-up resampling by 2 or 3: a diffusion model's soft edges) and noise, per sample."""
    b = x.shape[0]
    soft = [F.interpolate(F.interpolate(x, scale_factor=1 / k, mode="bilinear"), size=x.shape[-2:], mode="bilinear")
            for k in (2, 3)]
    pick = torch.rand(b, 1, 1, 1, generator=g) < 0.5
    mix = torch.rand(b, 1, 1, 1, generator=g)
    x = mix * torch.where(pick, soft[0], soft[1]) + (1 - mix) * x
    return x + torch.randn(x.shape, generator=g) * torch.rand(b, 1, 1, 1, generator=g) * 0.15


def _labels(items) -> dict[str, torch.Tensor]:
    shape = [PROBE_SHAPES.index("other" if s.shape == "ellipse" else s.shape) for s in items]
    return {"shape": torch.tensor(shape),
            "colour": torch.tensor([HEADS["colour"].index(s.colour) for s in items]),
            "background": torch.tensor([HEADS["background"].index(s.background) for s in items])}


def _batch(rng: random.Random, n: int):
    size = rng.choice(SIZES)
    items = [_scene(rng) for _ in range(n)]
    items = [Scene(s.shape, s.colour, s.background, size[0], size[1], *_refit(s, size)) for s in items]
    return torch.stack([to_tensor(draw(s)) for s in items]), items


def _refit(s: Scene, size) -> tuple:
    """Keep centre/radius valid when a scene is redrawn at another size."""
    aw, ah = size[0] / min(size), size[1] / min(size)
    return (min(max(s.cx, s.r / aw), 1 - s.r / aw), min(max(s.cy, s.r / ah), 1 - s.r / ah), s.r, s.angle)


def train_probe(steps: int = 5000, seed: int = 0, batch: int = 32, log=print) -> Probe:
    torch.manual_seed(seed)
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    probe = Probe()
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3)
    for step in range(steps):
        for grp in opt.param_groups:
            grp["lr"] = 2e-3 * (1 - step / steps)
        x, items = _batch(rng, batch)
        out, y = probe(_augment(x, g)), _labels(items)
        loss = sum(F.cross_entropy(out[k], y[k]) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"probe step {step}/{steps} loss {loss.item():.4f}")
    return probe.eval()


@torch.no_grad()
def accuracy(probe: Probe, n: int = 1000, seed: int = 10_000, augment: bool = False) -> dict[str, float]:
    """Held-out accuracy per head on ``n`` fresh scenes (a seed the training never used)."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    hits = dict.fromkeys(HEADS, 0)
    for _ in range(n // 50):
        x, items = _batch(rng, 50)
        out, y = probe(_augment(x, g) if augment else x), _labels(items)
        for k in HEADS:
            hits[k] += int((out[k].argmax(-1) == y[k]).sum())
    return {k: v / (n // 50 * 50) for k, v in hits.items()}


@torch.no_grad()
def classify(probe: Probe, images) -> list[dict[str, str]]:
    """[{'shape': ..., 'colour': ..., 'background': ...}] for PIL images (any size)."""
    out = []
    for img in images:
        logits = probe(to_tensor(img.convert("RGB"))[None])
        out.append({k: HEADS[k][int(v.argmax())] for k, v in logits.items()})
    return out


def save_probe(probe: Probe, path: Path, stats: dict) -> None:
    save_file({k: v.contiguous() for k, v in probe.state_dict().items()}, str(path),
              metadata={"heads": json.dumps(HEADS), "accuracy": json.dumps(stats)})


def load_probe(path: Path) -> Probe:
    probe = Probe()
    probe.load_state_dict(load_file(str(path)))
    return probe.eval()
