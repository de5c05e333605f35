"""Micro-batches per bucket, as kohya batches them, as a pure function of (seed, epoch).

Each bucket holds its images ``num_repeats`` times; every epoch shuffles each bucket, cuts it into
batches of ``batch_size`` (the last may be partial) and shuffles the batch order. Steps per epoch =
sum over buckets of ceil(n / batch_size). Each sample's flip, crop and caption draw use an RNG seeded
by (seed, epoch, batch position, slot), so a resumed run (``offset``) reproduces them without state.
With several processes, rank r takes global batches r, r + world, ... (wrapping to the start so every
rank takes the same number of steps, as accelerate does). Each batch also carries ``rng_seed``, a function
of (seed, epoch, global batch number), which seeds its noise: N processes train as one does.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from . import report
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
    from_config: bool = False
    """Built from a kohya dataset TOML (its metadata then has ``ss_datasets``, as kohya writes it)."""

    @property
    def total_batches(self) -> int:
        """Micro-batches of one epoch over all processes."""
        return sum(batches_of(d.buckets, d.spec.batch_size) for d in self.datasets)

    def __len__(self) -> int:
        """Micro-batches per epoch for this rank."""
        return math.ceil(self.total_batches / self.world)

    def step_layout(self, accum: int) -> dict:
        """Step s reads the epoch's global batches [s·n, (s+1)·n), n = processes x accumulation; the batches
        themselves depend on each dataset's batch size."""
        return {"batch_sizes": [d.spec.batch_size for d in self.datasets], "batches_per_step": self.world * accum}

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
        if self.max_train_steps is None and any(0 < s.token_warmup_step < 1 for d in self.datasets
                                                for s in d.spec.subsets):
            raise ValueError("token_warmup_step < 1 is a fraction of the run: set DiffusionBatches.max_train_steps "
                             "before iterating.")
        plan = self.plan(epoch)
        for i in range(offset, len(self)):
            position = (i * self.world + self.rank) % len(plan)
            d, members = plan[position]
            batch = self.collate(d, members, epoch=epoch, position=position,
                                 step=(epoch * len(self) + i) // self.grad_accum)
            # the noise, timesteps and dropout of this batch (lorakit.tasks.diffusion.step): the same draw
            # whichever process (of however many) takes the batch, and after any resume
            batch["rng_seed"] = random.Random(f"{self.seed}:{epoch}:{i * self.world + self.rank}:noise").getrandbits(63)
            yield batch

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
                images.append(load_pixels(item, flip=flip, rng=rng))
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

    # -- reports (lorakit.tasks.diffusion.dataset.report) ----------------------------------------------
    def table(self) -> list[dict]:
        """One row per bucket: dataset, resolution, images, samples (with repeats), batches."""
        return report.table(self.datasets)

    def explain_steps(self) -> str:
        """How the steps per epoch were computed, in words and numbers."""
        return report.explain_steps(self.datasets, self.world)

    def metadata(self) -> dict[str, str]:
        """kohya's dataset ``ss_*`` entries (string values, nested ones as JSON)."""
        return report.metadata(self.datasets, len(self), self.from_config)
