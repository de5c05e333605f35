"""``generate_images``: A1111 prompt text -> PIL images, with A1111's meaning for every part of the syntax.

    pipe, family = load_pipeline("models/sd15")
    images = generate_images(pipe, "(masterpiece:1.3), 1girl <lora:catEars:0.8>", "EasyNegative",
                             width=512, height=768, steps=30, cfg_scale=7, seed=1234,
                             sampler="DPM++ 2M", schedule="Karras", lora_dir="loras", embeddings="embeddings")

In order: ``<name:...>`` tags come out of the text (LoRA tags load LoRAs; others are warned about);
``AND`` splits the prompt into weighted sub-prompts; prompt editing ``[a:b:when]`` and alternation
``[a|b]`` give each sub-prompt (and the negative prompt) a schedule of texts; each text is encoded
once with emphasis, ``BREAK``, 75-token chunks and embeddings (:mod:`lorakit.sd.encode`); each step
conditions on its texts (:mod:`lorakit.sd.denoise`). Image i uses seed ``seed + i`` (A1111's batch
rule) and carries its infotext in ``image.info['parameters']``. LoRA files stay loaded on the
pipeline as live adapters; the next call only changes which are active and how strongly.
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from pathlib import Path

import torch

import lorakit

from .denoise import Plan, check_cond, decode, sample_latents
from .dit import denoise_dit, dit_family, dit_options, encode_pair, set_flow_sampler
from .embeddings import EmbeddingDB
from .encode import Cond, check_clip_skip, encode_prompt
from .infotext import create_infotext, hash_list, lora_hash, model_hash
from .loras import LoraIndex, LoraStack, LoraTag, extract_tags, other_tags
from .samplers import make_scheduler, split_name
from .schedule import prompt_schedule, split_and, text_at

OUTPUT_TYPES = ("pil", "latent")


def _extra_tags(loras) -> list[tuple[LoraTag, Path | None]]:
    """``loras`` as (LoraTag, file or None): a LoraTag, a name/path, (name, strength) or (name, te, unet); or a
    dict name->strength. A ``Path`` is taken as given (the caller chose it); a name is looked up."""
    if loras is None:
        return []
    if isinstance(loras, dict):
        loras = [(k, *(v if isinstance(v, (tuple, list)) else (v,))) for k, v in loras.items()]
    out = []
    for item in loras:
        if isinstance(item, LoraTag):
            out.append((item, None))
            continue
        name, *strengths = (item,) if isinstance(item, (str, Path)) else item
        strengths = [float(s) for s in strengths]
        if not all(math.isfinite(s) for s in strengths):
            raise ValueError(f"LoRA {name}: strengths {strengths} must be finite numbers.")
        out.append((LoraTag(str(name), *strengths), Path(name) if isinstance(name, Path) else None))
    return out


def _lora_requests(tags: list[tuple[LoraTag, Path | None]], index: LoraIndex):
    """[(path, te, unet)] and [(tag name, path)] for infotext."""
    requests, named = [], []
    for tag, path in tags:
        path = path if path is not None else index.resolve(tag.name)
        requests.append((path, tag.te, tag.unet))
        named.append((tag.name, path))
    return requests, named


def set_sampler(pipe, sampler: str, schedule: str | None):
    """Install the scheduler for an A1111 sampler; built from the pipeline's original scheduler config."""
    base = getattr(pipe, "_lorakit_base_scheduler", None)
    if base is None:
        base = pipe._lorakit_base_scheduler = dict(pipe.scheduler.config)
    pipe.scheduler = make_scheduler(base, sampler, schedule)


def native_size(pipe) -> tuple[int, int]:
    """(width, height) the model was trained at: the U-Net's sample size times the VAE's downscale factor
    (512 for SD 1.5, 768 for SD 2.x-768, 1024 for SDXL, FLUX.1 and SD3)."""
    if getattr(pipe, "unet", None) is None:  # FLUX.1/SD3: the pipeline's default (128 latents: 1024 px)
        size = getattr(pipe, "default_sample_size", None) or pipe.transformer.config.get("sample_size", 128)
    else:
        size = pipe.unet.config.sample_size
    factor = getattr(pipe, "vae_scale_factor", None) or 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    h, w = (size, size) if isinstance(size, int) else size
    return w * factor, h * factor


def _model_name(pipe, model_name):
    if model_name is not None:
        return model_name
    source = getattr(pipe, "_lorakit_source", None)
    return Path(source).stem if source is not None else None


def check_args(pipe, *, width: int, height: int, steps: int, count: int, cfg_scale: float,
               clip_skip: int | None, family: str | None = None) -> None:
    """One error per bad argument, before anything is loaded or generated."""
    if not isinstance(cfg_scale, (int, float)) or not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale={cfg_scale}: the CFG scale must be a finite number such as 7.")
    if width % 8 or height % 8 or width <= 0 or height <= 0:
        raise ValueError(f"size {width}x{height}: width and height must be positive multiples of 8.")
    if steps < 1 or count < 1:
        raise ValueError(f"steps={steps}, count={count}: both must be at least 1.")
    if not family:
        check_clip_skip(pipe, clip_skip)


def _plan(pipe, text: str, negative: str, steps: int, syntax: str, options: dict) -> Plan:
    """Sub-prompts with their schedules, each distinct text encoded once."""
    cache: dict[str, Cond] = {}

    def encoded(t: str) -> Cond:
        if t not in cache:
            cache[t] = check_cond(encode_prompt(pipe, t, **options), t)
        return cache[t]

    a1111 = syntax == "a1111"  # ComfyUI's syntax has no AND and no prompt editing
    subs = split_and(text) if a1111 else [(text, 1.0)]
    schedules = [(prompt_schedule(t, steps) if a1111 else [(steps, t)], w) for t, w in subs]
    negative_schedule = prompt_schedule(negative, steps) if a1111 else [(steps, negative)]
    for schedule, _ in schedules:  # encode everything (and fail on a bad prompt) before sampling
        for _, t in schedule:
            encoded(t)
    for _, t in negative_schedule:
        encoded(t)

    def conds(step: int) -> list[tuple[Cond, float]]:
        weights: dict[str, float] = {}  # equal texts share one U-Net pass: Σ w_i (c − u) with the same c
        for schedule, w in schedules:
            t = text_at(schedule, step)
            weights[t] = weights.get(t, 0.0) + w
        return [(encoded(t), w) for t, w in weights.items()]

    return Plan(conds, lambda step: encoded(text_at(negative_schedule, step)), encoded(""))


@torch.no_grad()
def generate_images(pipe, prompt: str, negative_prompt: str = "", *, width: int | None = None,
                    height: int | None = None, steps: int, cfg_scale: float | None = None, seed: int | None,
                    sampler: str | None = None, schedule: str | None = None, count: int = 1,
                    clip_skip: int | None = None, loras=None, lora_dir=None, embeddings=None,
                    generator_device="cpu", emphasis: str = "Original", syntax: str = "a1111",
                    model_name: str | None = None, extra_params: dict | None = None,
                    guidance: float | None = None, shift: float | None = None, output_type: str = "pil") -> list:
    """Generate ``count`` images for an A1111-syntax prompt; see the module docstring.

    ``width``/``height`` default to the model's native size (:func:`native_size`). ``loras`` adds LoRAs
    beside the prompt's tags (names/paths with strengths, see ``_extra_tags``); ``lora_dir`` (a folder,
    a list of folders or a :class:`LoraIndex`) resolves tag names, and prompts name no file outside it;
    ``embeddings`` is a directory or an :class:`EmbeddingDB`; ``seed`` None or -1 picks a random seed;
    ``extra_params`` are appended to the infotext. ``output_type="latent"`` returns the denoised latents
    (SD pipelines). A NaN/Inf anywhere raises :class:`~lorakit.sd.denoise.NonFiniteError` naming the step,
    seed and prompt. FLUX.1/SD3 pipelines (:mod:`lorakit.sd.dit`) add ``guidance`` (FLUX.1-dev's distilled
    guidance) and ``shift`` (the flow-match schedule's); ``sampler``/``cfg_scale`` default per family
    (SD: Euler a, 7); prompt editing and ``AND`` are SD-only.
    """
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r}: expected one of {OUTPUT_TYPES}.")
    family = dit_family(pipe)
    if family:
        if output_type != "pil":
            raise ValueError(f"output_type={output_type!r}: FLUX.1/SD3 pipelines return images only ('pil').")
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
    native = native_size(pipe)
    width, height = width or native[0], height or native[1]
    check_args(pipe, width=width, height=height, steps=steps, count=count, cfg_scale=cfg_scale, clip_skip=clip_skip,
               family=family)
    text, tags = extract_tags(prompt)
    for tag in other_tags(prompt):
        warnings.warn(f"{tag}: lorakit applies only <lora:...> and <lyco:...> tags; this one was removed from the "
                      "prompt, as A1111 removes every <name:...> tag.", stacklevel=2)
    index = lora_dir if isinstance(lora_dir, LoraIndex) else LoraIndex(lora_dir)
    requests, named = _lora_requests([(t, None) for t in tags] + _extra_tags(loras), index)
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
            plan = _plan(pipe, text, negative_prompt, steps, syntax, options)
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
    out = []
    with _eval(pipe):
        for i in range(count):
            generator = torch.Generator(generator_device).manual_seed(seed + i)
            if family:
                image = denoise_dit(pipe, family, cond, uncond, width=width, height=height, steps=steps,
                                    cfg_scale=cfg_scale, guidance=guidance, generator=generator)
            else:
                where = f"seed {seed + i}, prompt {prompt!r}"
                latents = sample_latents(pipe, plan, width=width, height=height, steps=steps, cfg_scale=cfg_scale,
                                         generator=generator, where=where)
                if output_type == "latent":
                    out.append(latents)
                    continue
                image = decode(pipe, latents, where)
            image.info["parameters"] = create_infotext(prompt, negative_prompt, {**params, "Seed": seed + i})
            out.append(image)
    return out


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
