"""SD training data with kohya's conventions: ``N_name`` folders or a kohya dataset TOML, kohya's caption
processing and aspect-ratio buckets, latent/text-encoder caches keyed by content.

``build_dataset(args, batch_size=..., seed=...)`` returns ``DiffusionBatches``; iterate
``batches.epoch(epoch, offset)`` for batch dicts, print ``batches.table()`` and
``batches.explain_steps()``, list ``batches.problems`` in ``validate``, and store
``batches.metadata()`` (kohya's ``ss_*`` dataset keys) in the saved LoRA.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch

from .args import DatasetArgs, problems
from .batches import DiffusionBatches
from .cache import LatentCache, TextCache, default_cache_dir
from .captions import is_static, process_caption
from .layout import resolve
from .scan import scan_dataset

__all__ = ["DatasetArgs", "DiffusionBatches", "build_dataset", "problems", "process_caption"]


def build_dataset(args: DatasetArgs, *, batch_size: int, seed: int, world: int = 1, rank: int = 0,
                  encode_latents: Callable[[torch.Tensor], torch.Tensor] | None = None, vae_key: str | None = None,
                  encode_text: Callable[[list[str]], dict[str, torch.Tensor]] | None = None,
                  text_key: str | None = None, bucket_step: int | None = 64,
                  scan_only: bool = False) -> DiffusionBatches:
    """Scan the folders (or the kohya TOML), assign buckets and fill the caches.

    ``encode_latents(pixels [B,3,H,W] in [-1,1]) -> latents`` (already scaled by the VAE's factor) and
    ``encode_text(captions) -> {name: tensor [B,...]}`` come from the task with a key naming the encoder
    (weights, dtype, scaling), part of every cache key. Without them, or with caching off, batches carry
    ``pixels``/``captions``. ``bucket_step`` is the step the model needs (64 SD1/2, 32 SDXL; ``None``:
    unknown, not checked).
    ``scan_only`` (validate) fills no cache. Problems do not raise: they are in ``.problems``.
    """
    errors = problems(args)
    if batch_size < 1:
        errors.append(f"train.batch_size={batch_size}: expected a positive integer.")
    if errors:
        return DiffusionBatches([], seed, world, rank, problems=errors)
    specs, errors = resolve(args, batch_size)
    notes: list[str] = []
    for spec in specs if bucket_step else ():  # None: the model could not be read, so its step is unknown
        w, h = spec.resolution
        if spec.enable_bucket and spec.bucket_reso_steps % bucket_step:
            errors.append(f"bucket_reso_steps={spec.bucket_reso_steps} is not a multiple of {bucket_step}, which "
                          "this model family needs (64 for SD1/SD2, 32 for SDXL, 16 for FLUX.1/SD3).")
        if not spec.enable_bucket and (w % bucket_step or h % bucket_step):
            errors.append(f"resolution {w}x{h}: with enable_bucket off every image is cropped to it, and this model "
                          f"needs sides that are multiples of {bucket_step}; use {w - w % bucket_step or bucket_step}x"
                          f"{h - h % bucket_step or bucket_step} or turn enable_bucket on.")
    datasets = [scan_dataset(spec, errors, notes) for spec in specs]
    if not errors and not any(d.items for d in datasets):
        errors.append("the dataset has no usable images.")
    batches = DiffusionBatches(datasets, seed, world, rank, problems=errors, notes=notes,
                               from_config=bool(args.dataset_config))
    subsets = [s for spec in specs for s in spec.subsets]
    static = all(is_static(s) for s in subsets)
    if args.cache_text_encoder_outputs and not static:
        errors.append("data.cache_text_encoder_outputs needs captions that never change; turn off shuffle_caption, "
                      "caption dropout, tag dropout, wildcards and token warm-up, or the cache.")
    if scan_only or errors:
        return batches
    # a disk entry outlives the run: without a key naming the encoder, another VAE could read it
    if args.cache_latents_to_disk and encode_latents is not None and not vae_key:
        raise ValueError("build_dataset: cache_latents_to_disk needs vae_key (a string naming the VAE weights, "
                         "dtype and scaling) so entries of another VAE are never read.")
    if args.cache_text_encoder_outputs_to_disk and encode_text is not None and not text_key:
        raise ValueError("build_dataset: cache_text_encoder_outputs_to_disk needs text_key (naming the text "
                         "encoders, clip_skip and max_token_length) so entries of other encoders are never read.")
    directory = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.cache_latents and encode_latents is not None:
        where = directory if args.cache_latents_to_disk else None
        batches.latent_caches = []
        # processes sharing a disk cache each encode their share, then read the others' entries
        split = where is not None and world > 1 and torch.distributed.is_available() \
            and torch.distributed.is_initialized()
        for ds in datasets:
            cache = LatentCache(vae_key or "vae", where)
            if split:
                cache.fill(ds.items, encode_latents, args.vae_batch_size, shard=(rank, world))
                torch.distributed.barrier()
            cache.fill(ds.items, encode_latents, args.vae_batch_size)
            batches.latent_caches.append(cache)
    if args.cache_text_encoder_outputs and encode_text is not None:
        where = directory if args.cache_text_encoder_outputs_to_disk else None
        batches.text_cache = TextCache(text_key or "text", where)
        # static captions: one processing gives the text every draw trains with
        captions = [process_caption(i.caption, i.subset, random.Random(0), epoch=1, step=0)
                    for d in datasets for i in d.items]
        batches.text_cache.fill(captions, encode_text)
    return batches
