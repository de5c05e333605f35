"""FLUX.1 and SD3/3.5 generation with A1111/Forge prompt text: the DiT half of ``generate_images``.

What carries over from SD, and how (Forge's text engines are the reference for FLUX.1):

* ``<lora:name:te:unet>`` tags resolve as for SD, in any format (kohya, diffusers, ComfyUI); ``unet``
  is the transformer's strength, ``te`` the text encoders'.
* Emphasis ``(a:1.2)``/``[a]`` and ``BREAK`` weight T5 tokens as Forge's ``T5TextProcessingEngine`` does:
  the weighted pieces are tokenized without special tokens, each ``BREAK`` chunk ends with ``</s>``
  and is padded to 256 tokens (longer prompts are not cut), and the chunk's encoding is weighted with
  A1111's "Original" rule (or "No norm", or ComfyUI's). CLIP-L/CLIP-G use A1111's 75-token chunks;
  FLUX.1 takes only CLIP-L's pooled output of chunk 0 (so weights there change nothing), SD3 the
  penultimate hidden states of both CLIPs (zero-padded to T5's width, followed by the T5 tokens) and
  both pooled projections. Textual-inversion embeddings apply to the CLIP encoders.
* Sampling: flow-match Euler (default; ``Heun`` too) with A1111 schedule types where the scheduler
  has them (Simple = the model's own shifted schedule, Karras, Exponential, Beta). ``shift`` replaces
  the scheduler's shift (and turns off FLUX.1's resolution-dependent shift).
* Guidance: FLUX.1-dev's distilled guidance is ``guidance`` (Forge's "Distilled CFG Scale", default
  3.5; schnell has none); ``cfg_scale`` > 1 adds true CFG with the negative prompt (Forge's default is
  1: off). SD3 uses CFG (``cfg_scale``, default 7) and has no ``guidance``.
* Infotext as Forge writes it: ``CFG scale: 1, Distilled CFG Scale: 3.5`` (SD3: ``Shift`` when given).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from .encode import encode_prompt
from .prompt import apply_weights, parse, tokenize_chunks
from .samplers import SCHEDULES, SIGMA_KEYS, split_name

FLOW_SAMPLERS = {"Euler": "FlowMatchEulerDiscreteScheduler", "Heun": "FlowMatchHeunDiscreteScheduler"}
PIPELINES = {"FluxPipeline": "flux1", "StableDiffusion3Pipeline": "sd3"}
T5_MIN_LENGTH = 256  # Forge pads every T5 chunk to 256 tokens
DEFAULTS = {"flux1": {"sampler": "Euler", "schedule": "Simple", "cfg_scale": 1.0, "guidance": 3.5},
            "sd3": {"sampler": "Euler", "schedule": "Simple", "cfg_scale": 7.0, "guidance": None}}


def dit_family(pipe) -> str | None:
    """``flux1``/``sd3`` for a diffusers FLUX.1 (or Chroma-like Flux) / SD3 pipeline, else None."""
    return PIPELINES.get(type(pipe).__name__)


def set_flow_sampler(pipe, sampler: str, schedule: str, shift: float | None) -> None:
    """Install the flow-matching scheduler for an A1111 sampler + schedule type, from the pipeline's own config."""
    import diffusers

    if sampler not in FLOW_SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not a flow-matching sampler; FLUX.1/SD3 take "
                         f"{', '.join(FLOW_SAMPLERS)}.")
    base = getattr(pipe, "_lorakit_base_scheduler", None)
    if base is None:
        base = pipe._lorakit_base_scheduler = dict(pipe.scheduler.config)
    cls = getattr(diffusers, FLOW_SAMPLERS[sampler])
    accepted = set(inspect.signature(cls.__init__).parameters)
    options = {k: v for k, v in SCHEDULES[schedule].items() if k != "timestep_spacing"}  # flow sigmas have no spacing
    if set(options) - accepted:
        raise ValueError(f"sampler {sampler!r} does not support schedule type {schedule!r}.")
    config = {k: v for k, v in base.items() if not k.startswith("_") and k not in SIGMA_KEYS}
    config.update(options)
    if shift is not None:
        config.update(shift=float(shift), use_dynamic_shifting=False)
    pipe.scheduler = cls.from_config({k: v for k, v in config.items() if k in accepted})


@dataclass
class DitCond:
    """A prompt's conditioning: ``embeds`` [1, tokens, D] (T5 for FLUX.1; CLIP+T5 for SD3), ``pooled`` [1, P]."""

    embeds: torch.Tensor
    pooled: torch.Tensor


def t5_chunks(tokenizer, parsed) -> list[tuple[list[int], list[float]]]:
    """Forge's T5 tokenization: weighted pieces, ``BREAK`` starts a chunk, each chunk ends with ``</s>``."""
    texts = [t for t, _ in parsed]
    ids = tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"] if texts else []
    chunks, tokens, weights = [], [], []
    for piece, (text, weight) in zip(ids, parsed, strict=True):
        if text == "BREAK" and weight == -1:
            chunks.append((tokens + [tokenizer.eos_token_id], weights + [1.0]))
            tokens, weights = [], []
            continue
        tokens, weights = tokens + list(piece), weights + [weight] * len(piece)
    chunks.append((tokens + [tokenizer.eos_token_id], weights + [1.0]))
    return chunks


def encode_t5(tokenizer, encoder, chunks, length: int, emphasis: str, syntax: str, empty=None) -> torch.Tensor:
    """Each chunk padded to ``length`` and encoded; weights applied per chunk; chunks concatenated."""
    out = []
    for tokens, weights in chunks:
        pad = length - len(tokens)
        ids = torch.tensor([tokens + [tokenizer.pad_token_id] * pad], device=encoder.device)
        z = encoder(ids).last_hidden_state
        w = torch.tensor([weights + [1.0] * pad], device=z.device)
        out.append(apply_weights(z, w, emphasis=emphasis, syntax=syntax, z_empty=empty))
    return torch.cat(out, dim=1)


def _pooled(tokenizer, encoder, parsed, projected: bool) -> torch.Tensor:
    chunk = tokenize_chunks(parsed, tokenizer)[0]
    out = encoder(torch.tensor([chunk.tokens], device=encoder.device))
    return out.text_embeds if projected else out.pooler_output


@torch.no_grad()
def encode_pair(pipe, family: str, text: str, negative: str, *, clip_skip=None, emphasis="Original",
                syntax="a1111", embeddings=None) -> tuple[DitCond, DitCond]:
    """Conditioning of the prompt and the negative prompt, padded to equal lengths (see the module docstring)."""
    t5_pair = (pipe.tokenizer_2, pipe.text_encoder_2) if family == "flux1" else (pipe.tokenizer_3, pipe.text_encoder_3)
    parsed = [parse(t, syntax) for t in (text, negative)]
    t5 = None
    if t5_pair[1] is not None:
        chunks = [t5_chunks(t5_pair[0], p) for p in parsed]
        length = max(T5_MIN_LENGTH, *(len(t) for c in chunks for t, _ in c))
        n = max(len(c) for c in chunks)
        empty = None
        if syntax == "comfyui":
            empty = encode_t5(*t5_pair, t5_chunks(t5_pair[0], [["", 1.0]]), length, emphasis, "a1111")
        chunks = [c + [([t5_pair[0].eos_token_id], [1.0])] * (n - len(c)) for c in chunks]  # equal chunk counts
        t5 = [encode_t5(*t5_pair, c, length, emphasis, syntax, empty) for c in chunks]
    if family == "flux1":
        pooled = [_pooled(pipe.tokenizer, pipe.text_encoder, p, projected=False) for p in parsed]
        return tuple(DitCond(e, p) for e, p in zip(t5, pooled, strict=True))
    if t5 is None:  # SD3 without T5: zeros in its place, as diffusers does
        width = pipe.transformer.config.joint_attention_dim
        t5 = [torch.zeros(1, T5_MIN_LENGTH, width, device=pipe.text_encoder.device)] * 2
    clips = SimpleNamespace(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, tokenizer_2=pipe.tokenizer_2,
                            text_encoder_2=pipe.text_encoder_2)
    options = {"clip_skip": clip_skip, "emphasis": emphasis, "syntax": syntax, "embeddings": embeddings}
    conds = [encode_prompt(clips, t, **options) for t in (text, negative)]
    length = max(c.embeds.shape[1] for c in conds)
    out = []
    for i, (cond, p) in enumerate(zip(conds, parsed, strict=True)):
        clip = cond.embeds
        if clip.shape[1] < length:  # A1111: the shorter prompt gets chunks of the empty prompt
            empty = encode_prompt(clips, "", **options).embeds
            clip = torch.cat([clip] + [empty] * ((length - clip.shape[1]) // empty.shape[1]), dim=1)
        clip = torch.nn.functional.pad(clip, (0, t5[i].shape[-1] - clip.shape[-1]))
        pooled = torch.cat([_pooled(pipe.tokenizer, pipe.text_encoder, p, projected=True), cond.pooled], dim=-1)
        out.append(DitCond(torch.cat([clip, t5[i].to(clip.dtype)], dim=1), pooled))
    return tuple(out)


def dit_options(family: str, sampler, schedule, cfg_scale, guidance, shift) -> dict:
    """The family's defaults filled in and checked; ``sampler``/``schedule`` as A1111 spells them."""
    d = DEFAULTS[family]
    if guidance is not None and d["guidance"] is None:
        raise ValueError(f"guidance={guidance}: distilled guidance is FLUX.1-dev's; {family} uses --cfg (CFG scale).")
    name, sched = split_name(sampler or d["sampler"], schedule)
    return {"sampler": name, "schedule": d["schedule"] if sched == "Automatic" else sched,
            "cfg_scale": d["cfg_scale"] if cfg_scale is None else float(cfg_scale),
            "guidance": d["guidance"] if guidance is None else float(guidance), "shift": shift}


def denoise_dit(pipe, family: str, cond: DitCond, uncond: DitCond, *, width, height, steps, cfg_scale, guidance,
                generator):
    """One image from encoded conditioning with the pipeline's current scheduler and adapters."""
    dtype = pipe.transformer.dtype
    kwargs = {"prompt_embeds": cond.embeds.to(dtype), "pooled_prompt_embeds": cond.pooled.to(dtype)}
    if cfg_scale > 1:
        kwargs.update(negative_prompt_embeds=uncond.embeds.to(dtype), negative_pooled_prompt_embeds=uncond.pooled.to(dtype))
    if family == "flux1":
        kwargs.update(true_cfg_scale=cfg_scale, guidance_scale=guidance if guidance is not None else 3.5)
    else:
        kwargs["guidance_scale"] = cfg_scale
    pipe.set_progress_bar_config(disable=True)
    return pipe(**kwargs, width=width, height=height, num_inference_steps=steps, generator=generator,
                output_type="pil").images[0]
