"""The sampling loop behind :func:`lorakit.sd.generate.generate_images`, for SD1/SD2/SDXL U-Nets.

Each step conditions on what the prompt schedule says for that step (:mod:`lorakit.sd.schedule`) and
guides with A1111's composable form of classifier-free guidance (``combine_denoised``; Liu et al. 2022,
"Compositional Visual Generation with Composable Diffusion Models", https://arxiv.org/abs/2206.01714):

    eps = eps(uncond) + Σ_i w_i · cfg · (eps(cond_i) − eps(uncond))

With one sub-prompt of weight 1 this is ordinary CFG, computed as diffusers' pipelines compute it, so the
loop gives their latents. The un- and conditional passes run as one batch (uncond first); sub-prompts of
different lengths are padded by repeating their last token vector, as A1111 stacks them.

Latents are checked after every step, and the decoded image too: a NaN or Inf raises
:class:`NonFiniteError` naming the step, seed and prompt instead of writing a black image. A VAE in
half precision that overflows is retried once in float32 (A1111's automatic VAE upcast).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .encode import Cond, pad_pair

FP32_HINT = ("Run in float32 (--dtype float32), lower the LoRA strengths or the CFG scale, or check the LoRA "
             "files with `lorakit inspect`.")


class NonFiniteError(ValueError):
    """A NaN or Inf in the conditioning, the latents or the decoded image."""


@dataclass
class Plan:
    """What to condition on: ``conds(step)`` -> [(Cond, weight)], ``uncond(step)`` -> Cond (0-based steps)."""

    conds: Callable[[int], list[tuple[Cond, float]]]
    uncond: Callable[[int], Cond]
    empty: Cond  # the empty prompt's encoding, to pad the shorter of cond and uncond


def _stack(conds: list[Cond]) -> Cond:
    """Sub-prompt conditionings as one batch; shorter ones repeat their last token vector (A1111's stack_conds)."""
    length = max(c.embeds.shape[1] for c in conds)
    embeds = [torch.cat([c.embeds, c.embeds[:, -1:].expand(-1, length - c.embeds.shape[1], -1)], dim=1)
              for c in conds]
    pooled = torch.cat([c.pooled for c in conds]) if conds[0].pooled is not None else None
    return Cond(torch.cat(embeds), pooled)


def _batch(plan: Plan, step: int) -> tuple[Cond, list[float]]:
    """[uncond, cond_1, ...] as one Cond (same token length) and the sub-prompts' weights."""
    pairs = plan.conds(step)
    conds, uncond = _stack([c for c, _ in pairs]), plan.uncond(step)
    if conds.embeds.shape[1] != uncond.embeds.shape[1]:
        conds, uncond = pad_pair(conds, uncond, plan.empty)
    pooled = None if uncond.pooled is None else torch.cat([uncond.pooled, conds.pooled])
    return Cond(torch.cat([uncond.embeds, conds.embeds]), pooled), [w for _, w in pairs]


def unet_kwargs(pipe, cond: Cond, width: int, height: int) -> dict:
    """The U-Net's conditioning arguments; SDXL adds the pooled text vector and its size/crop ids."""
    dtype = pipe.unet.dtype
    kwargs = {"encoder_hidden_states": cond.embeds.to(dtype)}
    if cond.pooled is not None:  # SDXL: original size, crop top-left, target size (no crop, same size)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=cond.embeds.device)
        kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(dtype),
                                       "time_ids": time_ids.expand(cond.embeds.shape[0], -1)}
    return kwargs


def combine(noise: torch.Tensor, weights: list[float], cfg_scale: float) -> torch.Tensor:
    """``noise`` = [uncond, cond_1, ...] predictions -> uncond + Σ w_i·cfg·(cond_i − uncond)."""
    uncond = noise[:1]
    guided = uncond
    for i, w in enumerate(weights, start=1):
        guided = guided + (w * cfg_scale) * (noise[i:i + 1] - uncond)
    return guided


@torch.no_grad()
def sample_latents(pipe, plan: Plan, *, width: int, height: int, steps: int, cfg_scale: float, generator,
                   where: str) -> torch.Tensor:
    """Denoised latents [1, C, h, w] with the pipeline's scheduler; ``where`` ("seed 3, prompt '...'") goes
    into the error when a step produces NaN/Inf."""
    scheduler, unet = pipe.scheduler, pipe.unet
    device = unet.device
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    cond0 = plan.conds(0)[0][0]
    latents = pipe.prepare_latents(1, unet.config.in_channels, height, width, cond0.embeds.dtype, device, generator)
    extra = pipe.prepare_extra_step_kwargs(generator, 0.0)
    for i, t in enumerate(timesteps):
        step = i * steps // len(timesteps)  # the sampler's step (two-evaluation samplers run 2 per step)
        cond, weights = _batch(plan, step)
        x = scheduler.scale_model_input(torch.cat([latents] * cond.embeds.shape[0]), t)
        noise = unet(x, t, **unet_kwargs(pipe, cond, width, height), return_dict=False)[0]
        latents = scheduler.step(combine(noise, weights, cfg_scale), t, latents, **extra, return_dict=False)[0]
        if not torch.isfinite(latents).all():
            half = " in float16" if unet.dtype == torch.float16 else ""
            raise NonFiniteError(f"sampling step {step + 1}/{steps} produced NaN/Inf latents ({where}): the U-Net "
                                 f"or a LoRA overflowed{half}. {FP32_HINT}")
    return latents


def _vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    latents = latents.to(vae.dtype)
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        latents = (latents * torch.tensor(std, device=latents.device).view(shape).to(latents.dtype)
                   / config.scaling_factor + torch.tensor(mean, device=latents.device).view(shape).to(latents.dtype))
    else:
        latents = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0)
    return vae.decode(latents, return_dict=False)[0]


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, where: str):
    """The PIL image for ``latents``; a half-precision VAE that overflows is retried in float32."""
    vae = pipe.vae
    image = _vae_decode(vae, latents)
    if not torch.isfinite(image).all() and vae.dtype != torch.float32:
        warnings.warn(f"the VAE overflowed in {str(vae.dtype).removeprefix('torch.')} ({where}); decoded again in "
                      "float32.", stacklevel=2)
        dtype = vae.dtype
        try:
            image = _vae_decode(vae.to(torch.float32), latents.float())
        finally:
            vae.to(dtype)
    if not torch.isfinite(image).all():
        raise NonFiniteError(f"the VAE decoded NaN/Inf from finite latents ({where}). Use another VAE (for SDXL in "
                             "float16, one made for it such as sdxl-vae-fp16-fix) or --dtype float32.")
    return pipe.image_processor.postprocess(image.float(), output_type="pil")[0]


def check_cond(cond: Cond, text: str) -> Cond:
    """Refuse a conditioning with NaN/Inf (an overflowing text encoder or text-encoder LoRA)."""
    finite = torch.isfinite(cond.embeds).all() and (cond.pooled is None or torch.isfinite(cond.pooled).all())
    if not finite:
        raise NonFiniteError(f"the text encoder's output for {text!r} has NaN/Inf values. {FP32_HINT}")
    return cond
