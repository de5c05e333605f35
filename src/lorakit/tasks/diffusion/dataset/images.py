"""Pixels of one sample: resize to cover the bucket, crop the overflow (centre or random), flip, scale to [-1, 1].

Also the SDXL size conditioning kohya computes for it: original size, crop top-left and target size.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from .buckets import crop_ltrb
from .scan import ImageItem, read_image

FILTERS = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST,
           "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "area": Image.Resampling.BOX, "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


def resize(img: Image.Image, size: tuple[int, int], interpolation: str | None) -> Image.Image:
    """kohya's default: area averaging when shrinking, Lanczos when enlarging."""
    if img.size == tuple(size):
        return img
    if interpolation is None:
        interpolation = "area" if size[0] * size[1] < img.size[0] * img.size[1] else "lanczos"
    return img.resize(size, FILTERS[interpolation])


def crop_offsets(resized: tuple[int, int], bucket: tuple[int, int], rng: random.Random | None) -> tuple[int, int]:
    """(left, top) of the bucket inside the resized image: centred, or uniform with ``rng`` (random_crop)."""
    dx, dy = resized[0] - bucket[0], resized[1] - bucket[1]
    if rng is None:
        return dx // 2, dy // 2
    # kohya draws the width offset first, then the height offset, each only when there is overflow
    left = rng.randint(0, dx) if dx > 0 else 0
    top = rng.randint(0, dy) if dy > 0 else 0
    return left, top


def to_tensor(img: Image.Image) -> torch.Tensor:
    """[3, H, W] float32 in [-1, 1] (x / 127.5 - 1, as ToTensor + Normalize(0.5, 0.5))."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return arr / 127.5 - 1.0


def load_pixels(item: ImageItem, *, flip: bool = False, rng: random.Random | None = None) -> torch.Tensor:
    """The sample's pixels at its bucket size; ``rng`` set means a random crop."""
    img = resize(read_image(item.path), item.resized, item.subset.resize_interpolation)
    left, top = crop_offsets(item.resized, item.bucket, rng)
    img = img.crop((left, top, left + item.bucket[0], top + item.bucket[1]))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(img)


def size_conditioning(item: ImageItem, flip: bool) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """((orig h, orig w), (crop top, crop left), (target h, target w)) as kohya passes them to SDXL.

    The crop box is kohya's ``get_crop_ltrb`` (the image fitted inside the bucket); a flipped sample's
    left is ``target_w - crop_right``.
    """
    left, top, right, _ = crop_ltrb(item.bucket, item.size)
    bw, bh = item.bucket
    if flip:
        left = bw - right
    return (item.size[1], item.size[0]), (int(top), int(left)), (bh, bw)
