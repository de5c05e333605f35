"""The folders a LoRA learns from, in kohya's ``N_name`` layout with one caption file per image: the
concept (rings, which the base model never saw) and a regularization set of the base world's shapes."""

from __future__ import annotations

import random
from pathlib import Path

from .world import BASE_SHAPES, CONCEPT, SIZES, TRIGGER, draw, random_scene

UPSCALE = 2  # images are drawn at twice a bucket size, so the trainer's bucketing resizes them


def write_concept(root: Path, n: int = 16, repeats: int = 10, seed: int = 3) -> Path:
    """Write ``root/<repeats>_sks ring/NNN.png`` + ``NNN.txt`` captions; returns the folder.

    Sizes cycle through the world's aspect ratios (square, 3:5, 5:3, 4:3, 3:4), so buckets matter.
    Refuses to write into a folder that already holds files (never overwrite a user's data).
    """
    return _write(Path(root) / f"{repeats}_{TRIGGER} {CONCEPT}", (CONCEPT,), n, seed)


def write_regularization(root: Path, n: int = 32, seed: int = 4) -> Path:
    """Write ``root/1_shape/``: kohya regularization images of the base world's shapes with their captions
    (DreamBooth's prior preservation: they hold the base behaviour while the LoRA learns the concept)."""
    return _write(Path(root) / "1_shape", BASE_SHAPES, n, seed)


def _write(folder: Path, shapes: tuple[str, ...], n: int, seed: int) -> Path:
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} already holds files; remove it or choose another root to write this set.")
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        scene = random_scene(rng, shapes=shapes, size=(w * UPSCALE, h * UPSCALE), centred=True)
        draw(scene).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(scene.caption() + "\n")
    return folder
