"""The procedural world: flat-coloured shapes on plain backgrounds, with their captions.

Every image is a pure function of a seed (``draw(Scene)``), so a data set is a list of scenes and the
ground truth (shape, colour, background) is known exactly: the probe learns from it, and the LoRA
concept (a ring, which the base model never sees) is drawn by the same code.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 215),
           "yellow": (235, 215, 40), "white": (240, 240, 240), "black": (25, 25, 25)}
BASE_SHAPES = ("circle", "square", "triangle", "cross")
CONCEPT = "ring"  # never in the base model's training data
SHAPES = BASE_SHAPES + (CONCEPT,)
ROUND = ("circle", "ring")  # drawn as discs, never rotated
TRIGGER = "sks"
SIZES = ((32, 32), (24, 40), (40, 24), (32, 24), (24, 32))  # (width, height): several aspect ratios
SUPERSAMPLE = 4  # draw big, shrink with a box filter: smooth edges like a real photo's


@dataclass(frozen=True)
class Scene:
    """One image's ground truth; ``cx, cy, r`` are fractions of the shorter side (centre, radius)."""

    shape: str
    colour: str
    background: str
    width: int = 32
    height: int = 32
    cx: float = 0.5
    cy: float = 0.5
    r: float = 0.35
    angle: float = 0.0

    def caption(self, trigger: str = TRIGGER) -> str:
        """'a red circle on a blue background'; the concept is named with its trigger word ('sks ring')."""
        noun = f"{trigger} {self.shape}" if self.shape == CONCEPT else self.shape
        return f"a {self.colour} {noun} on a {self.background} background"


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of the shape centred at (cx, cy) with outer radius r (pixels), rotated by angle (radians)."""
    if shape == "square":
        pts = [(math.pi / 4 + k * math.pi / 2, r) for k in range(4)]
    elif shape == "triangle":
        pts = [(-math.pi / 2 + k * 2 * math.pi / 3, r) for k in range(3)]
    elif shape == "cross":  # a plus sign, arms a third of the width
        a, b = r * 0.95, r * 0.32
        xy = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        pts = [(math.atan2(y, x), math.hypot(x, y)) for x, y in xy]
    else:
        raise ValueError(f"unknown polygon shape {shape!r}; expected one of {SHAPES}")
    return [(cx + d * math.cos(t + angle), cy + d * math.sin(t + angle)) for t, d in pts]


def draw(scene: Scene) -> Image.Image:
    """Render ``scene`` as an RGB image of ``scene.width`` x ``scene.height`` pixels."""
    s = SUPERSAMPLE
    w, h = scene.width * s, scene.height * s
    img = Image.new("RGB", (w, h), COLOURS[scene.background])
    pen = ImageDraw.Draw(img)
    side = min(w, h)
    cx, cy, r = scene.cx * w, scene.cy * h, scene.r * side
    fill = COLOURS[scene.colour]
    if scene.shape in ROUND:
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        if scene.shape == "ring":  # a disc with a hole of half its radius: the background shows through
            pen.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=COLOURS[scene.background])
    elif scene.shape == "ellipse":  # not a world shape: the probe's "none of these" examples
        rx, ry = (r, 0.55 * r) if scene.angle >= 0 else (0.55 * r, r)
        pen.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)
    else:
        pen.polygon(_polygon(scene.shape, cx, cy, r, scene.angle), fill=fill)
    return img.resize((scene.width, scene.height), Image.Resampling.BOX)


def random_scene(rng: random.Random, shapes=BASE_SHAPES, size: tuple[int, int] | None = None,
                 exclude: frozenset = frozenset(), centred: bool = False) -> Scene:
    """A random scene: shape from ``shapes``, colour != background, random size/position/rotation.

    ``exclude`` holds (shape, colour, background) triples never drawn (the held-out combinations).
    ``centred`` keeps the shape near the centre at nearly one size and angle (the world the base model
    learns; the probe learns the free one so it reads shapes anywhere).
    """
    while True:
        shape = rng.choice(shapes)
        colour, background = rng.sample(list(COLOURS), 2)
        if (shape, colour, background) not in exclude:
            break
    width, height = size or rng.choice(SIZES)
    if centred:
        r = rng.uniform(0.36, 0.42)
        angle = rng.uniform(-0.1, 0.1) if shape not in ROUND else 0.0
        return Scene(shape, colour, background, width, height, 0.5 + rng.uniform(-0.03, 0.03),
                     0.5 + rng.uniform(-0.03, 0.03), r, angle)
    r = rng.uniform(0.26, 0.42)
    aspect_w, aspect_h = width / min(width, height), height / min(width, height)
    # keep the whole shape inside the frame: centre at least r (in short-side units) from each edge
    cx = rng.uniform(r / aspect_w, 1 - r / aspect_w)
    cy = rng.uniform(r / aspect_h, 1 - r / aspect_h)
    angle = rng.uniform(-0.25, 0.25) if shape not in ROUND else 0.0
    return Scene(shape, colour, background, width, height, cx, cy, r, angle)


def held_out(seed: int = 1234, share: float = 0.15) -> frozenset:
    """(shape, colour, background) combinations kept out of pretraining, to test generalisation."""
    rng = random.Random(seed)
    combos = [(s, c, b) for s in BASE_SHAPES for c in COLOURS for b in COLOURS if c != b]
    return frozenset(rng.sample(combos, round(share * len(combos))))


def to_tensor(img: Image.Image):
    """PIL RGB -> float tensor [3, H, W] in [-1, 1] (the VAE's input range)."""
    import torch

    a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def to_image(x) -> Image.Image:
    """Float tensor [3, H, W] in [-1, 1] -> PIL RGB."""
    a = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a)
