"""The diffusion step's math, apart from any model: noise, timesteps, targets and loss weighting.

Kept apart from the prediction (OneTrainer's lesson) so that min-SNR-γ, debiased estimation and the
per-sample weights are written once for every family. With ᾱ_t = Π(1-β):

* ``add_noise``: x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε (DDPM, Ho et al. 2020)
* ``target``: ε, or v = sqrt(ᾱ_t)·ε − sqrt(1-ᾱ_t)·x0 (Salimans & Ho 2022)
* ``snr(t) = ᾱ_t / (1-ᾱ_t)``; min-SNR-γ (Hang et al. 2023): w = min(snr, γ)/snr (ε) or
  min(snr, γ)/(snr+1) (v); debiased (Yu et al. 2024): w = 1/sqrt(min(snr, 1000)) (ε) or
  1/(min(snr, 1000)+1) (v) — kohya's and diffusers' formulas.
* zero-terminal SNR (Lin et al. 2024): rescale sqrt(ᾱ) so that sqrt(ᾱ_T) = 0 and sqrt(ᾱ_0) stays.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def betas_from_config(cfg: dict) -> torch.Tensor:
    """The DDPM betas of a diffusers scheduler config (linear, scaled_linear or squaredcos_cap_v2)."""
    n, start, end = cfg.get("num_train_timesteps", 1000), cfg.get("beta_start", 0.0001), cfg.get("beta_end", 0.02)
    kind = cfg.get("beta_schedule", "linear")
    if cfg.get("trained_betas") is not None:
        return torch.tensor(cfg["trained_betas"], dtype=torch.float32)
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float32) ** 2
    if kind == "squaredcos_cap_v2":
        f = [math.cos(((i / n) + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(n + 1)]
        return torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(n)], dtype=torch.float32)
    raise ValueError(f"scheduler beta_schedule={kind!r} is not supported; expected linear, scaled_linear or "
                     "squaredcos_cap_v2.")


def zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1)."""
    s = torch.cumprod(1 - betas, 0).sqrt()
    s0, st = s[0].clone(), s[-1].clone()
    s = (s - st) * s0 / (s0 - st)
    a = s ** 2
    a = torch.cat([a[:1], a[1:] / a[:-1]])
    return 1 - a


class Schedule:
    """ᾱ of the model's own noise schedule (optionally zero-terminal-SNR), on a device."""

    def __init__(self, scheduler_config: dict, zero_snr: bool = False, device=None):
        betas = betas_from_config(scheduler_config)
        if zero_snr or scheduler_config.get("rescale_betas_zero_snr"):
            betas = zero_terminal_snr(betas)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).to(device)  # fp32, as diffusers computes it
        self.num_steps = len(betas)

    def _at(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod.to(like.device)[t].to(like.dtype)
        shape = (-1,) + (1,) * (like.dim() - 1)
        return a.sqrt().reshape(shape), (1 - a).sqrt().reshape(shape)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sa, s1 = self._at(t, x0)
        return sa * x0 + s1 * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        if prediction == "epsilon":
            return noise
        sa, s1 = self._at(t, x0)
        return sa * noise - s1 * x0

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(t.device)[t]
        return a / (1 - a)


def draw_noise(latents: torch.Tensor, args, generator=None) -> torch.Tensor:
    """ε with the configured offset / multires additions (kohya ``train_util`` + ``custom_train_functions``)."""
    b, c = latents.shape[:2]
    kw = {"device": latents.device, "dtype": latents.dtype, "generator": generator}
    noise = torch.randn(latents.shape, **kw)
    if args.noise_offset:
        off = args.noise_offset
        if args.noise_offset_random_strength:
            off = off * torch.rand(b, 1, 1, 1, **kw)
        if args.adaptive_noise_scale:
            off = off + args.adaptive_noise_scale * latents.mean((2, 3), keepdim=True).abs()
            off = off.clamp(min=0.0)
        noise = noise + off * torch.randn(b, c, 1, 1, **kw)
    if args.multires_noise_iterations:
        noise = pyramid_noise(noise, args.multires_noise_iterations, args.multires_noise_discount, generator)
    return noise


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float, generator=None) -> torch.Tensor:
    """Multires noise (Whitaker 2023, kohya ``pyramid_noise_like``): upsampled coarse noise, normalised."""
    b, c, w, h = noise.shape
    kw = {"device": noise.device, "dtype": noise.dtype, "generator": generator}
    for i in range(iterations):
        r = float(torch.rand(1, generator=generator, device=noise.device)) * 2 + 2
        w, h = max(1, int(w / (r ** i))), max(1, int(h / (r ** i)))
        noise = noise + F.interpolate(torch.randn(b, c, w, h, **kw), size=noise.shape[2:], mode="bilinear") * discount ** i
        if w == 1 or h == 1:
            break
    return noise / noise.std()


def draw_timesteps(n: int, args, num_steps: int, device, generator=None) -> torch.Tensor:
    """Uniform integer timesteps in [min_timestep, max_timestep)."""
    hi = args.max_timestep if args.max_timestep is not None else num_steps
    return torch.randint(args.min_timestep, min(hi, num_steps), (n,), device=device, generator=generator)


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, huber_c: float) -> torch.Tensor:
    """Per-sample loss [B]: the mean over every non-batch dimension of l2, l1, huber or smooth-l1."""
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)  # fp32, or fp64
    pred, target = pred.to(dtype), target.to(dtype)
    if kind == "l2":
        loss = (pred - target) ** 2
    elif kind == "l1":
        loss = (pred - target).abs()
    elif kind == "huber":  # pseudo-Huber 2c(sqrt((p-t)² + c²) - c), kohya's form
        loss = 2 * huber_c * (torch.sqrt((pred - target) ** 2 + huber_c ** 2) - huber_c)
    elif kind == "smooth_l1":
        loss = F.smooth_l1_loss(pred, target, reduction="none", beta=huber_c)
    else:
        raise ValueError(f"loss_type={kind!r}: expected l2, l1, huber or smooth_l1.")
    return loss.mean(dim=tuple(range(1, loss.dim())))


def sample_losses(pred: torch.Tensor, target: torch.Tensor, args, loss_weight: torch.Tensor | None) -> torch.Tensor:
    """Per-sample loss [B] of ``args.loss_type`` times the samples' weights (regularization images)."""
    loss = elementwise_loss(pred, target, args.loss_type, args.huber_c)
    return loss if loss_weight is None else loss * loss_weight.to(loss.device, loss.dtype)


def snr_weights(snr: torch.Tensor, prediction: str, min_snr_gamma: float | None, debiased: bool) -> torch.Tensor:
    """Per-sample loss weights [B] from the timesteps' SNR (1 when neither option is on)."""
    w = torch.ones_like(snr)
    if min_snr_gamma is not None:
        clipped = torch.minimum(snr, torch.full_like(snr, min_snr_gamma))
        w = w * clipped / (snr + 1 if prediction == "v_prediction" else snr)
    if debiased:
        capped = torch.clamp(snr, max=1000)
        w = w * (1 / (capped + 1) if prediction == "v_prediction" else 1 / capped.sqrt())
    return w
