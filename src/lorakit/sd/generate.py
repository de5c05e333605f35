"""``generate_images``: A1111 prompt text (emphasis, BREAK, ``<lora:...>`` tags, embeddings) -> PIL images.

    pipe, family = load_pipeline("models/sd15")
    images = generate_images(pipe, "(masterpiece:1.3), 1girl <lora:catEars:0.8>", "EasyNegative",
                             width=512, height=768, steps=30, cfg_scale=7, seed=1234,
                             sampler="DPM++ 2M", schedule="Karras", lora_dir="loras", embeddings="embeddings")

Image i uses seed ``seed + i`` (A1111's batch rule) and carries its infotext in ``image.info['parameters']``
(:func:`lorakit.sd.infotext.save_png` writes it into the PNG). LoRA files stay loaded on the pipeline as
live adapters; the next call only changes which are active and how strongly.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import torch

import lorakit

from .dit import denoise_dit, dit_family, dit_options, encode_pair, set_flow_sampler
from .embeddings import EmbeddingDB
from .encode import Cond, encode_prompt, pad_pair
from .infotext import create_infotext, hash_list, lora_hash, model_hash
from .loras import LoraIndex, LoraStack, LoraTag, extract_tags
from .samplers import make_scheduler, split_name


def _lora_requests(tags: list[LoraTag], index: LoraIndex):
    """[(path, te, unet)] and [(tag name, path)] for infotext."""
    requests, named = [], []
    for tag in tags:
        path = index.resolve(tag.name)
        requests.append((path, tag.te, tag.unet))
        named.append((tag.name, path))
    return requests, named


def _extra_tags(loras) -> list[LoraTag]:
    """``loras`` as LoraTags: a LoraTag, a name/path, (name, strength) or (name, te, unet); or a dict name->strength."""
    if loras is None:
        return []
    if isinstance(loras, dict):
        loras = [(k, *(v if isinstance(v, (tuple, list)) else (v,))) for k, v in loras.items()]
    out = []
    for item in loras:
        if isinstance(item, LoraTag):
            out.append(item)
        elif isinstance(item, (str, Path)):
            out.append(LoraTag(str(item)))
        else:
            name, *strengths = item
            out.append(LoraTag(str(name), *[float(s) for s in strengths]))
    return out


def set_sampler(pipe, sampler: str, schedule: str | None):
    """Install the scheduler for an A1111 sampler; built from the pipeline's original scheduler config."""
    base = getattr(pipe, "_lorakit_base_scheduler", None)
    if base is None:
        base = pipe._lorakit_base_scheduler = dict(pipe.scheduler.config)
    pipe.scheduler = make_scheduler(base, sampler, schedule)


def _model_name(pipe, model_name):
    if model_name is not None:
        return model_name
    source = getattr(pipe, "_lorakit_source", None)
    return Path(source).stem if source is not None else None


@torch.no_grad()
def generate_images(pipe, prompt: str, negative_prompt: str = "", *, width: int, height: int, steps: int,
                    cfg_scale: float | None = None, seed: int | None, sampler: str | None = None,
                    schedule: str | None = None, count: int = 1, clip_skip: int | None = None, loras=None,
                    lora_dir=None, embeddings=None, generator_device="cpu", emphasis: str = "Original",
                    syntax: str = "a1111", model_name: str | None = None, extra_params: dict | None = None,
                    guidance: float | None = None, shift: float | None = None) -> list:
    """Generate ``count`` images for an A1111-syntax prompt; see the module docstring.

    ``loras`` adds LoRAs beside the prompt's tags (names/paths with strengths, see ``_extra_tags``);
    ``lora_dir`` resolves tag names; ``embeddings`` is a directory or an :class:`EmbeddingDB`;
    ``seed`` None or -1 picks a random seed; ``extra_params`` are appended to the infotext.
    FLUX.1/SD3 pipelines (:mod:`lorakit.sd.dit`) add ``guidance`` (FLUX.1-dev's distilled guidance) and
    ``shift`` (the flow-match schedule's); ``sampler``/``cfg_scale`` default per family (SD: Euler a, 7).
    """
    if width % 8 or height % 8 or width <= 0 or height <= 0:
        raise ValueError(f"size {width}x{height}: width and height must be positive multiples of 8.")
    if steps < 1 or count < 1:
        raise ValueError(f"steps={steps}, count={count}: both must be at least 1.")
    family = dit_family(pipe)
    if family:
        opts = dit_options(family, sampler, schedule, cfg_scale, guidance, shift)
        sampler_name, schedule_name, cfg_scale, guidance = (opts[k] for k in ("sampler", "schedule", "cfg_scale",
                                                                              "guidance"))
        if not pipe.transformer.config.get("guidance_embeds", False):
            guidance = None  # schnell / Chroma: no distilled guidance input
    else:
        if guidance is not None or shift is not None:
            raise ValueError("guidance and shift are for FLUX.1/SD3 (flow-matching) pipelines; this is a Stable "
                             "Diffusion pipeline (use cfg_scale and the sampler's schedule).")
        sampler_name, schedule_name = split_name(sampler or "Euler a", schedule)
        cfg_scale = 7.0 if cfg_scale is None else cfg_scale
    text, tags = extract_tags(prompt)
    index = lora_dir if isinstance(lora_dir, LoraIndex) else LoraIndex(lora_dir)
    requests, named = _lora_requests(tags + _extra_tags(loras), index)
    db = embeddings if isinstance(embeddings, EmbeddingDB) or embeddings is None else EmbeddingDB(embeddings)
    if db is not None:
        db.used = {}
    LoraStack.of(pipe).activate(requests)  # refuses wrong-family files before anything is generated
    options = {"clip_skip": clip_skip, "emphasis": emphasis, "syntax": syntax, "embeddings": db}
    with _eval(pipe):
        if family:
            set_flow_sampler(pipe, sampler_name, schedule_name, shift)
            cond, uncond = encode_pair(pipe, family, text, negative_prompt, **options)
        else:
            set_sampler(pipe, sampler_name, schedule_name)
            cond = encode_prompt(pipe, text, **options)
            uncond = encode_prompt(pipe, negative_prompt, **options)
            if cond.embeds.shape[1] != uncond.embeds.shape[1]:
                cond, uncond = pad_pair(cond, uncond, encode_prompt(pipe, "", **options))
    seed = random.randrange(2**32) if seed is None or seed == -1 else int(seed)
    params = {"Steps": steps, "Sampler": sampler_name,
              "Schedule type": None if schedule_name == "Automatic" else schedule_name,
              "CFG scale": cfg_scale, "Distilled CFG Scale": guidance, "Shift": shift, "Size": f"{width}x{height}",
              "Model hash": model_hash(source) if (source := getattr(pipe, "_lorakit_source", None)) else None,
              "Model": _model_name(pipe, model_name),
              "Clip skip": clip_skip if clip_skip and clip_skip > 1 else None,
              "Emphasis": None if emphasis == "Original" or syntax != "a1111" else emphasis,
              "Lora hashes": hash_list((n, lora_hash(p)) for n, p in named),
              "TI hashes": hash_list((n, e.shorthash) for n, e in (db.used if db else {}).items()),
              **(extra_params or {}), "Version": f"lorakit {lorakit.__version__}"}
    images = []
    with _eval(pipe):
        for i in range(count):
            generator = torch.Generator(generator_device).manual_seed(seed + i)
            if family:
                image = denoise_dit(pipe, family, cond, uncond, width=width, height=height, steps=steps,
                                    cfg_scale=cfg_scale, guidance=guidance, generator=generator)
            else:
                image = denoise(pipe, cond, uncond, width=width, height=height, steps=steps, cfg_scale=cfg_scale,
                                generator=generator)
            image.info["parameters"] = create_infotext(prompt, negative_prompt, {**params, "Seed": seed + i})
            images.append(image)
    return images


@contextlib.contextmanager
def _eval(pipe):
    """Eval mode while sampling (no dropout from adapters being trained), each part's mode restored after."""
    parts = [m for m in (getattr(pipe, n, None) for n in ("unet", "transformer", "text_encoder", "text_encoder_2",
                                                            "text_encoder_3", "vae"))
             if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in parts]
    for m in parts:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(parts, modes, strict=True):
            m.train(mode)


def denoise(pipe, cond: Cond, uncond: Cond, *, width, height, steps, cfg_scale, generator):
    """One image from encoded conditioning with the pipeline's current scheduler and adapters."""
    dtype = pipe.unet.dtype
    kwargs = {"prompt_embeds": cond.embeds.to(dtype), "negative_prompt_embeds": uncond.embeds.to(dtype)}
    if cond.pooled is not None:
        kwargs["pooled_prompt_embeds"] = cond.pooled.to(dtype)
        kwargs["negative_pooled_prompt_embeds"] = uncond.pooled.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(**kwargs, width=width, height=height, num_inference_steps=steps, guidance_scale=cfg_scale,
               generator=generator, output_type="pil")
    return out.images[0]
