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

# kohya's names (it uses OpenCV's INTER_AREA for "area"; Pillow's BOX filter is the same pixel-area average)
FILTERS = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST,
           "bilinear": Image.Resampling.BILINEAR, "linear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "cubic": Image.Resampling.BICUBIC,
           "area": Image.Resampling.BOX, "box": Image.Resampling.BOX}


def resize(img: Image.Image, size: tuple[int, int], interpolation: str | None) -> Image.Image:
    """kohya's default: area averaging when both sides shrink, else Lanczos."""
    if img.size == tuple(size):
        return img
    if interpolation is None:
        interpolation = "area" if size[0] <= img.size[0] and size[1] <= img.size[1] else "lanczos"
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
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0)


def color_aug(img: Image.Image, rng: random.Random) -> Image.Image:
    """kohya's colour augmentation: with probability 0.33, half the time a hue shift uniform in ±8 OpenCV
    hue units (±16°), else a gamma uniform in [0.95, 1.05] applied to the 0-255 values, clipped."""
    if rng.random() > 0.33:
        return img
    if rng.random() > 0.5:
        shift = rng.uniform(-8, 8) / 180  # a fraction of the hue circle
        h, s, v = img.convert("HSV").split()
        hue = np.rint((np.asarray(h, dtype=np.float64) / 255 + shift) % 1.0 * 255).astype(np.uint8)  # PIL: 0-255
        return Image.merge("HSV", (Image.fromarray(hue), s, v)).convert("RGB")
    gamma = rng.uniform(0.95, 1.05)
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) ** gamma, 0, 255).astype(np.uint8))


def load_pixels(item: ImageItem, *, flip: bool = False, rng: random.Random | None = None) -> torch.Tensor:
    """The sample's pixels at its bucket size. ``rng`` draws the subset's random crop and colour
    augmentation (without it, or with both off, the crop is centred and colours untouched)."""
    sub = item.subset
    img = resize(read_image(item.path), item.resized, sub.resize_interpolation)
    left, top = crop_offsets(item.resized, item.bucket, rng if sub.random_crop else None)
    img = img.crop((left, top, left + item.bucket[0], top + item.bucket[1]))
    if rng is not None and sub.color_aug:
        img = color_aug(img, rng)
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
