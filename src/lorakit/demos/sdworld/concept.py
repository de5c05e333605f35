"""The concept a LoRA learns: stars, in a kohya ``N_name`` folder with one caption file per image."""

from __future__ import annotations

import random
from pathlib import Path

from .world import BASE_SHAPES, CONCEPT, SIZES, TRIGGER, draw, random_scene

UPSCALE = 2  # concept images are drawn at twice a bucket size, so the trainer's bucketing resizes them


def write_concept(root: Path, n: int = 16, repeats: int = 10, seed: int = 3) -> Path:
    """Write ``root/<repeats>_sks star/NNN.png`` + ``NNN.txt`` captions; returns the folder.

    Sizes cycle through the world's aspect ratios (square, 3:5, 5:3, 4:3, 3:4), so buckets matter.
    Refuses to write into a folder that already holds files (never overwrite a user's data).
    """
    folder = Path(root) / f"{repeats}_{TRIGGER} {CONCEPT}"
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} already holds files; remove it or choose another root to write the concept set.")
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        scene = random_scene(rng, shapes=(CONCEPT,), size=(w * UPSCALE, h * UPSCALE), centred=True)
        draw(scene).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(scene.caption() + "\n")
    return folder


def write_regularization(root: Path, n: int = 32, seed: int = 4) -> Path:
    """Write ``root/1_shape/``: kohya regularization images of the base world's shapes with their captions
    (DreamBooth's prior preservation: they hold the base behaviour while the LoRA learns the concept)."""
    folder = Path(root) / "1_shape"
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} already holds files; remove it or choose another root for the regularization set.")
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        scene = random_scene(rng, shapes=BASE_SHAPES, size=(w * UPSCALE, h * UPSCALE), centred=True)
        draw(scene).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(scene.caption() + "\n")
    return folder
