"""What the dataset looks like, for people and for the saved file: the bucket table, the steps-per-epoch
explanation, and kohya's ``ss_*`` dataset metadata (``train_network.py`` writes the same keys)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .scan import ScannedDataset, batches_of


def table(datasets: list[ScannedDataset]) -> list[dict]:
    rows = []
    for d, ds in enumerate(datasets):
        for (w, h), members in ds.buckets.items():
            rows.append({"dataset": d, "resolution": f"{w}x{h}", "images": len(set(members)),
                         "samples": len(members), "batches": math.ceil(len(members) / ds.spec.batch_size)})
    return rows


def explain_steps(datasets: list[ScannedDataset], world: int = 1) -> str:
    lines = []
    for d, ds in enumerate(datasets):
        bs = ds.spec.batch_size
        reg = [i for i in ds.items if i.is_reg]
        lines.append(f"dataset {d} (batch size {bs}):")
        for sub, count in zip(ds.spec.subsets, ds.img_counts, strict=True):
            if not sub.is_reg:
                lines.append(f"  {sub.image_dir}: {count} images x {sub.num_repeats} repeats = "
                             f"{count * sub.num_repeats} samples")
        if reg or ds.num_reg_images:
            n = sum(i.num_repeats for i in reg)
            lines.append(f"  regularisation: {ds.num_reg_images} samples found, balanced to {n} from {len(reg)} "
                         f"images (kohya: until they reach the {ds.num_train_images} training samples)")
        samples = sum(len(m) for m in ds.buckets.values())
        per_bucket = " + ".join(f"ceil({len(m)}/{bs})" for m in ds.buckets.values())
        lines.append(f"  buckets: {per_bucket} = {batches_of(ds.buckets, bs)} batches "
                     f"({samples} samples / {bs} = {samples / bs:g} without per-bucket rounding)")
    total = sum(batches_of(ds.buckets, ds.spec.batch_size) for ds in datasets)
    line = f"steps per epoch: {total} micro-batches"
    if world > 1:
        line += f", ceil({total}/{world}) = {math.ceil(total / world)} per process"
    return "\n".join(lines + [line])


def _bucket_info(ds: ScannedDataset) -> dict:
    return {"buckets": {str(i): {"resolution": list(r), "count": len(m)} for i, (r, m) in enumerate(ds.buckets.items())},
            "mean_img_ar_error": ds.mean_ar_error}


def _subset_meta(sub, count: int) -> dict:
    keys = ("color_aug", "flip_aug", "random_crop", "shuffle_caption", "keep_tokens", "keep_tokens_separator",
            "secondary_separator", "enable_wildcard", "caption_prefix", "caption_suffix", "resize_interpolation")
    return {"img_count": count, "num_repeats": sub.num_repeats,
            **{k: getattr(sub, k) for k in keys}, "image_dir": Path(sub.image_dir).name,
            "class_tokens": sub.class_tokens, "is_reg": sub.is_reg}


def metadata(datasets: list[ScannedDataset], batches_per_epoch: int, from_config: bool) -> dict[str, str]:
    """kohya's keys: with a dataset TOML ``ss_datasets`` + merged ``ss_tag_frequency``/``ss_dataset_dirs``
    (training folders only); otherwise the flat per-dataset keys. Values are strings, nested ones JSON."""
    meta = {"ss_num_train_images": str(sum(d.num_train_images for d in datasets)),
            "ss_num_reg_images": str(sum(d.num_reg_images for d in datasets)),
            "ss_num_batches_per_epoch": str(batches_per_epoch)}
    tags, dirs, reg_dirs = {}, {}, {}
    for ds in datasets:
        for name, freq in ds.tag_frequency.items():
            tags.setdefault(name, freq)  # a folder used by several datasets counts once (kohya)
        for sub, count in zip(ds.spec.subsets, ds.img_counts, strict=True):
            name, target = Path(sub.image_dir).name, reg_dirs if sub.is_reg else dirs
            if from_config:
                if sub.is_reg:
                    continue
                base, i = name, 2
                while name in dirs:
                    name, i = f"{base} ({i})", i + 1
            target[name] = {"n_repeats": sub.num_repeats, "img_count": count}
    meta.update({"ss_tag_frequency": json.dumps(tags), "ss_dataset_dirs": json.dumps(dirs)})
    if from_config:
        meta["ss_datasets"] = json.dumps([{
            "is_dreambooth": True, "batch_size_per_device": ds.spec.batch_size,
            "num_train_images": ds.num_train_images, "num_reg_images": ds.num_reg_images,
            "resolution": list(ds.spec.resolution), "enable_bucket": ds.spec.enable_bucket,
            "min_bucket_reso": ds.spec.min_bucket_reso, "max_bucket_reso": ds.spec.max_bucket_reso,
            "tag_frequency": ds.tag_frequency, "bucket_info": _bucket_info(ds),
            "subsets": [_subset_meta(s, c) for s, c in zip(ds.spec.subsets, ds.img_counts, strict=True)]}
            for ds in datasets])
        return meta
    if datasets and datasets[0].spec.subsets:
        spec = datasets[0].spec
        sub = spec.subsets[0]
        meta.update({"ss_reg_dataset_dirs": json.dumps(reg_dirs), "ss_bucket_info": json.dumps(_bucket_info(datasets[0])),
                     "ss_resolution": str(spec.resolution), "ss_enable_bucket": str(spec.enable_bucket),
                     "ss_bucket_no_upscale": str(spec.bucket_no_upscale), "ss_min_bucket_reso": str(spec.min_bucket_reso),
                     "ss_max_bucket_reso": str(spec.max_bucket_reso), "ss_batch_size_per_device": str(spec.batch_size),
                     "ss_color_aug": str(bool(sub.color_aug)), "ss_flip_aug": str(bool(sub.flip_aug)),
                     "ss_random_crop": str(bool(sub.random_crop)), "ss_shuffle_caption": str(bool(sub.shuffle_caption)),
                     "ss_keep_tokens": str(sub.keep_tokens), "ss_caption_dropout_rate": str(sub.caption_dropout_rate),
                     "ss_caption_dropout_every_n_epochs": str(sub.caption_dropout_every_n_epochs),
                     "ss_caption_tag_dropout_rate": str(sub.caption_tag_dropout_rate)})
    return meta
