"""Micro-batches per bucket, as kohya batches them, as a pure function of (seed, epoch).

Each bucket holds its images ``num_repeats`` times; every epoch shuffles each bucket, cuts it into
batches of ``batch_size`` (the last may be partial) and shuffles the batch order. Steps per epoch =
sum over buckets of ceil(n / batch_size). Each sample's flip, crop and caption draw use an RNG seeded
by (seed, epoch, batch position, slot), so a resumed run (``offset``) reproduces them without state.
With several processes, rank r takes global batches r, r + world, ... (wrapping to the start so every
rank takes the same number of steps, as accelerate does).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cache import LatentCache, TextCache
from .captions import process_caption
from .images import load_pixels, size_conditioning
from .scan import ScannedDataset, batches_of


@dataclass
class DiffusionBatches:
    """The dataset as deterministic, sharded micro-batches (see the module docstring)."""

    datasets: list[ScannedDataset]
    seed: int
    world: int = 1
    rank: int = 0
    latent_caches: list[LatentCache | None] = field(default_factory=list)
    text_cache: TextCache | None = None
    problems: list[str] = field(default_factory=list)
    """Every problem found (bad images, captions, folders, TOML keys...): ``validate`` prints them."""
    notes: list[str] = field(default_factory=list)
    """Things worth knowing that are not errors (captions falling back to class tokens, unused reg images)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (the token warm-up counts optimizer steps, as kohya)."""
    max_train_steps: int | None = None
    """Total optimizer steps, for a fractional ``token_warmup_step``."""

    @property
    def total_batches(self) -> int:
        """Micro-batches of one epoch over all processes."""
        return sum(batches_of(d.buckets, d.spec.batch_size) for d in self.datasets)

    def __len__(self) -> int:
        """Micro-batches per epoch for this rank."""
        return math.ceil(self.total_batches / self.world)

    def plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        """The epoch's global batches: (dataset index, item indices)."""
        rng = random.Random(f"{self.seed}:{epoch}:order")
        plan = []
        for d, ds in enumerate(self.datasets):
            for members in ds.buckets.values():
                members = members[:]
                rng.shuffle(members)
                bs = ds.spec.batch_size
                plan += [(d, members[i:i + bs]) for i in range(0, len(members), bs)]
        rng.shuffle(plan)
        return plan

    def epoch(self, epoch: int, offset: int = 0):
        """Yield this rank's batch dicts of ``epoch`` (0-based) from micro-batch ``offset`` on."""
        plan = self.plan(epoch)
        for i in range(offset, len(self)):
            position = (i * self.world + self.rank) % len(plan)
            d, members = plan[position]
            yield self.collate(d, members, epoch=epoch, position=position,
                               step=(epoch * len(self) + i) // self.grad_accum)

    def collate(self, d: int, members: list[int], *, epoch: int, position: int, step: int) -> dict:
        ds, cache = self.datasets[d], self.latent_caches[d] if self.latent_caches else None
        images, captions, weights, orig, crops, targets = [], [], [], [], [], []
        for slot, index in enumerate(members):
            item = ds.items[index]
            sub = item.subset
            rng = random.Random(f"{self.seed}:{epoch}:{position}:{slot}")
            flip = bool(sub.flip_aug) and rng.random() < 0.5
            if cache is not None:
                images.append(cache.get(index, flip))
            else:
                images.append(load_pixels(item, flip=flip, rng=rng if sub.random_crop else None))
            captions.append(process_caption(item.caption, sub, rng, epoch=epoch + 1, step=step,
                                            max_train_steps=self.max_train_steps))
            weights.append(ds.spec.prior_loss_weight if item.is_reg else 1.0)
            o, c, t = size_conditioning(item, flip)
            orig.append(o)
            crops.append(c)
            targets.append(t)
        batch = {"latents" if cache is not None else "pixels": torch.stack(images),
                 "loss_weight": torch.tensor(weights, dtype=torch.float32),
                 "original_size": torch.tensor(orig, dtype=torch.long),
                 "crop_top_left": torch.tensor(crops, dtype=torch.long),
                 "target_size": torch.tensor(targets, dtype=torch.long)}
        if self.text_cache is not None:
            outs = [self.text_cache.get(c) for c in captions]
            for name in outs[0]:
                batch[f"te_{name}"] = torch.stack([o[name] for o in outs])
        else:
            batch["captions"] = captions
        return batch

    # -- reports --------------------------------------------------------------------------------------
    def table(self) -> list[dict]:
        """One row per bucket: dataset, resolution, images, samples (with repeats), batches."""
        rows = []
        for d, ds in enumerate(self.datasets):
            for (w, h), members in ds.buckets.items():
                rows.append({"dataset": d, "resolution": f"{w}x{h}", "images": len(set(members)),
                             "samples": len(members), "batches": math.ceil(len(members) / ds.spec.batch_size)})
        return rows

    def explain_steps(self) -> str:
        """How the steps per epoch were computed, in words and numbers."""
        lines = []
        for d, ds in enumerate(self.datasets):
            bs = ds.spec.batch_size
            train = [i for i in ds.items if not i.is_reg]
            reg = [i for i in ds.items if i.is_reg]
            lines.append(f"dataset {d} (batch size {bs}):")
            for sub, count in zip(ds.spec.subsets, ds.img_counts, strict=True):
                if not sub.is_reg:
                    lines.append(f"  {sub.image_dir}: {count} images x {sub.num_repeats} repeats = "
                                 f"{count * sub.num_repeats} samples")
            if reg or ds.num_reg_images:
                n = sum(i.num_repeats for i in reg)
                lines.append(f"  regularisation: {ds.num_reg_images} samples found, balanced to {n} from {len(reg)} "
                             f"images (kohya: at least the {ds.num_train_images} training samples)")
            samples = sum(len(m) for m in ds.buckets.values())
            steps = batches_of(ds.buckets, bs)
            per_bucket = " + ".join(f"ceil({len(m)}/{bs})" for m in ds.buckets.values())
            lines.append(f"  buckets: {per_bucket} = {steps} batches")
            lines.append(f"  ({samples} samples / {bs} = {samples / bs:g} without per-bucket rounding; "
                         f"{len(train)} training images)")
        total = self.total_batches
        lines.append(f"steps per epoch: {total} micro-batches" + (
            f", ceil({total}/{self.world}) = {len(self)} per process" if self.world > 1 else ""))
        return "\n".join(lines)

    def metadata(self) -> dict[str, str]:
        """kohya's dataset ``ss_*`` entries (string values, nested ones as JSON)."""
        tags, dirs, reg_dirs, infos = {}, {}, {}, []
        for ds in self.datasets:
            for name, freq in ds.tag_frequency.items():
                tags.setdefault(name, freq)
            for sub, count in zip(ds.spec.subsets, ds.img_counts, strict=True):
                target = reg_dirs if sub.is_reg else dirs
                target[Path(sub.image_dir).name] = {"n_repeats": sub.num_repeats, "img_count": count}
            infos.append({"buckets": {str(i): {"resolution": list(r), "count": len(m)}
                                      for i, (r, m) in enumerate(ds.buckets.items())},
                          "mean_img_ar_error": ds.mean_ar_error})
        first = self.datasets[0].spec if self.datasets else None
        meta = {"ss_tag_frequency": json.dumps(tags), "ss_dataset_dirs": json.dumps(dirs),
                "ss_reg_dataset_dirs": json.dumps(reg_dirs),
                "ss_bucket_info": json.dumps(infos[0] if len(infos) == 1 else infos),
                "ss_num_train_images": str(sum(d.num_train_images for d in self.datasets)),
                "ss_num_reg_images": str(sum(d.num_reg_images for d in self.datasets)),
                "ss_num_batches_per_epoch": str(len(self))}
        if first is not None:
            meta.update({"ss_resolution": str(first.resolution), "ss_enable_bucket": str(first.enable_bucket),
                         "ss_bucket_no_upscale": str(first.bucket_no_upscale),
                         "ss_min_bucket_reso": str(first.min_bucket_reso),
                         "ss_max_bucket_reso": str(first.max_bucket_reso),
                         "ss_batch_size_per_device": str(first.batch_size)})
            sub = first.subsets[0] if first.subsets else None
            if sub is not None:
                meta.update({"ss_flip_aug": str(bool(sub.flip_aug)), "ss_random_crop": str(bool(sub.random_crop)),
                             "ss_shuffle_caption": str(bool(sub.shuffle_caption)),
                             "ss_keep_tokens": str(sub.keep_tokens), "ss_color_aug": "False",
                             "ss_caption_dropout_rate": str(sub.caption_dropout_rate),
                             "ss_caption_dropout_every_n_epochs": str(sub.caption_dropout_every_n_epochs),
                             "ss_caption_tag_dropout_rate": str(sub.caption_tag_dropout_rate)})
        return meta
