"""Read the subsets' folders: images, their sizes and captions, reg balancing and bucket assignment.

Nothing in a dataset folder is written or deleted. Every unreadable image, empty caption file or
unusable size becomes a problem naming the file; the image is left out and the rest still loads, so
``validate`` lists them all at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from ....train.checks import MAX_EPOCH_SAMPLES
from .buckets import Bucketer
from .captions import tag_frequency
from .layout import DatasetSpec, SubsetSpec

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
OTHER_CAPTION_EXTENSIONS = (".txt", ".caption")


@dataclass
class ImageItem:
    """One image of a subset, with its bucket."""

    path: Path
    size: tuple[int, int]
    """(width, height) after EXIF orientation."""
    caption: str
    subset: SubsetSpec
    num_repeats: int
    is_reg: bool
    bucket: tuple[int, int] = (0, 0)
    resized: tuple[int, int] = (0, 0)
    ar_error: float = 0.0


@dataclass
class ScannedDataset:
    """One dataset's registered images (reg images balanced) and its buckets."""

    spec: DatasetSpec
    items: list[ImageItem]
    buckets: dict[tuple[int, int], list[int]]
    """Bucket (w, h) -> item indices, each repeated ``num_repeats`` times (kohya's bucket contents)."""
    num_train_images: int = 0
    num_reg_images: int = 0
    img_counts: list[int] = field(default_factory=list)
    """Images found per subset (kohya's ``img_count``)."""
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)
    mean_ar_error: float = 0.0


def read_image(path: Path) -> Image.Image:
    """RGB pixels, turned as the EXIF orientation says (what the user sees in a viewer)."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")


def read_caption(image: Path, subset: SubsetSpec, problems: list[str]) -> str | None:
    """The caption file's first line (all non-empty lines with wildcards on); ``None`` when absent."""
    path = image.with_suffix(subset.caption_extension)
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a Windows BOM is not caption text
    except UnicodeDecodeError:
        problems.append(f"{path}: not UTF-8 text; re-save the caption file as UTF-8.")
        return None
    if not any(line.strip() for line in lines):
        problems.append(f"{path}: empty caption file; write the caption or delete the file to use the class "
                        f"tokens {subset.class_tokens!r}.")
        return None
    if subset.enable_wildcard:
        return "\n".join(line.strip() for line in lines if line.strip())
    return lines[0].strip()


def scan_subset(subset: SubsetSpec, problems: list[str], notes: list[str]) -> list[ImageItem]:
    """Every readable image of one folder with its caption (kohya's fallback: the class tokens, else "")."""
    items = []
    # hidden files (macOS "._x.png" forks...) are skipped, as kohya's glob("*") skips them
    paths = sorted(p for p in Path(subset.image_dir).iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    missing = 0
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()  # decodes: a truncated or corrupt file fails here, not in the middle of training
                size = ImageOps.exif_transpose(img).size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            problems.append(f"{path}: unreadable or corrupt image ({exc}); fix or remove it.")
            continue
        caption = read_caption(path, subset, problems)
        if caption is None:
            missing += 1
            caption = subset.class_tokens or ""
        items.append(ImageItem(path, size, caption, subset, subset.num_repeats, subset.is_reg))
    if not paths:
        problems.append(f"{subset.image_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}).")
    if missing:
        others = [e for e in OTHER_CAPTION_EXTENSIONS if e != subset.caption_extension
                  and any(p.with_suffix(e).is_file() for p in paths)]
        hint = (f"; {others[0]} files are there: set caption_extension: {others[0]!r} to use them" if others else "")
        notes.append(f"{subset.image_dir}: {missing} of {len(paths)} images have no {subset.caption_extension} caption "
                     f"and train with {subset.class_tokens or ''!r}{hint}.")
    return items


def balance_reg(train: int, reg_items: list[ImageItem]) -> list[ImageItem]:
    """kohya's balancing: every reg image once with its repeats, then +1 repeat per image in turn until
    the reg count (with repeats) reaches the training count; images never reached are unused."""
    used: list[ImageItem] = []
    n, first = 0, True
    while n < train and reg_items:
        for item in reg_items:
            if first:
                used.append(item)
                n += item.num_repeats
            else:
                item.num_repeats += 1
                n += 1
            if n >= train:
                break
        first = False
    return used


def check_size(item: ImageItem, spec: DatasetSpec, problems: list[str]) -> bool:
    """Whether the image has a bucket. Only ``bucket_no_upscale`` can leave it without one: a side below
    the step rounds down to 0 (kohya then fails); otherwise any size is scaled to cover its bucket."""
    if min(item.bucket) < 1:
        w, h = item.size
        problems.append(f"{item.path}: {w}x{h} gives an empty bucket {item.bucket}: with bucket_no_upscale nothing is "
                        f"enlarged and sides round down to bucket_reso_steps={spec.bucket_reso_steps}; use a larger "
                        "image or turn bucket_no_upscale off (then it is upscaled into a bucket, as kohya does).")
        return False
    return True


def size_notes(items: list[ImageItem], spec: DatasetSpec, where: str) -> list[str]:
    """What ``validate`` warns about sizes: images enlarged into their bucket (kohya does it too; they train
    blurrier), and with buckets off the images whose aspect ratio is cropped away."""
    notes = []
    up = sorted((i for i in items if i.resized[0] > i.size[0]), key=lambda i: i.size[0] / i.resized[0])
    if up:
        named = ", ".join(f"{i.path.name} ({i.size[0]}x{i.size[1]} -> {i.bucket[0]}x{i.bucket[1]})" for i in up[:3])
        notes.append(f"{where}: {len(up)} image(s) are smaller than their bucket and are upscaled, by up to "
                     f"{up[0].resized[0] / up[0].size[0]:.1f}x (kohya does the same; larger images train sharper): "
                     f"{named}{', ...' if len(up) > 3 else ''}.")
    if not spec.enable_bucket:
        w, h = spec.resolution
        cropped = [i for i in items if abs(i.size[0] / i.size[1] - w / h) > 0.05 * w / h]
        if cropped:
            notes.append(f"{where}: enable_bucket is off (kohya's default): {len(cropped)} image(s) have another aspect ratio "
                         f"than {w}x{h} and lose their edges to the centre crop (e.g. {cropped[0].path.name}); set "
                         "enable_bucket: true to train every image whole in a bucket of its shape.")
    return notes


def scan_dataset(spec: DatasetSpec, problems: list[str], notes: list[str]) -> ScannedDataset:
    """Images of every subset, reg images balanced, each assigned to its bucket."""
    train_items: list[ImageItem] = []
    reg_items: list[ImageItem] = []
    counts, freq = [], {}
    n_train = n_reg = 0
    bucketer = Bucketer(spec.resolution, enable_bucket=spec.enable_bucket, min_size=spec.min_bucket_reso,
                        max_size=spec.max_bucket_reso, steps=spec.bucket_reso_steps, no_upscale=spec.bucket_no_upscale)
    for subset in spec.subsets:
        found = scan_subset(subset, problems, notes)
        kept = []
        for item in found:
            item.bucket, item.resized, item.ar_error = bucketer.select(*item.size)
            if check_size(item, spec, problems):
                kept.append(item)
        notes += size_notes(kept, spec, subset.image_dir)
        counts.append(len(kept))
        folder = freq.setdefault(Path(subset.image_dir).name, {})  # kohya keys tags by folder name
        for tag, c in tag_frequency([i.caption for i in kept]).items():
            folder[tag] = folder.get(tag, 0) + c
        if subset.is_reg:
            reg_items += kept
            n_reg += subset.num_repeats * len(kept)
        else:
            train_items += kept
            n_train += subset.num_repeats * len(kept)
    if n_reg > n_train:
        notes.append(f"{n_reg} regularisation samples (with repeats) for {n_train} training samples: "
                     "kohya's balancing leaves some reg images unused.")
    if n_train + n_reg > MAX_EPOCH_SAMPLES:  # every sample is an index held for the epoch's shuffle
        problems.append(f"{n_train + n_reg:,} samples per epoch (images x repeats); at most {MAX_EPOCH_SAMPLES:,} are "
                        "supported; lower the repeats.")
        return ScannedDataset(spec, [], {}, n_train, n_reg, counts, freq)
    items = train_items + balance_reg(n_train, reg_items)
    buckets: dict[tuple[int, int], list[int]] = {}
    for index, item in enumerate(items):
        buckets.setdefault(item.bucket, []).extend([index] * item.num_repeats)
    buckets = dict(sorted(buckets.items()))
    mean_err = sum(abs(i.ar_error) for i in items) / len(items) if items else 0.0
    return ScannedDataset(spec, items, buckets, n_train, n_reg, counts, freq, mean_err)


def batches_of(buckets: dict[tuple[int, int], list[int]], batch_size: int) -> int:
    """Steps kohya takes for these buckets: the sum of ceil(bucket size / batch size)."""
    return sum(math.ceil(len(v) / batch_size) for v in buckets.values())
