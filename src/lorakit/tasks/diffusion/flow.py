"""Flow matching for FLUX.1 and SD3 training, apart from any model: σ samplers, the noisy input, the
prediction transform, the target and the loss weights (rectified flow: Liu et al. 2022, Lipman et al.
2023; the samplers and weights of Esser et al. 2024, "Scaling Rectified Flow Transformers", arXiv
2403.03206; the names are kohya's ``timestep_sampling``/``weighting_scheme``).

* noisy input: x_σ = (1 − σ)·x0 + σ·ε; the model predicts the velocity v = ε − x0.
* σ samplers (``draw_sigmas``):

  - ``uniform``: σ ~ U(0, 1)
  - ``sigmoid``: σ = sigmoid(s·n), n ~ N(0, 1), s = ``sigmoid_scale``
  - ``shift``: the sigmoid draw, then σ' = S·σ / (1 + (S − 1)·σ), S = ``discrete_flow_shift``
  - ``flux_shift``: the sigmoid draw, then σ' = e^μ / (e^μ + 1/σ − 1) with μ linear in the image's token
    count, 0.5 at 256 tokens and 1.15 at 4096 (FLUX.1's resolution-dependent shift)
  - ``sigma``, ``logit_normal``, ``mode``: u from a density (uniform; sigmoid(N(m, s)); the SD3 paper's
    mode density u' = 1 − u − c·(cos²(πu/2) − 1 + u)), then σ = table[⌊1000·u⌋] where table is the
    flow-match Euler scheduler's training sigmas (1, 0.999, …, 0.001, each shifted by S) — what kohya's
    ``sigma`` sampling and diffusers' ``train_dreambooth_lora_{flux,sd3}.py`` do.

* ``model_prediction_type`` (kohya's names): ``raw`` compares the prediction with v = ε − x0;
  ``sigma_scaled`` turns it into an x0 estimate x_σ − σ·pred and compares that with x0 (EDM-style
  preconditioning, Karras et al. 2022 §5: kohya's SD3 trainer and diffusers' ``--precondition_outputs``).
  kohya's FLUX.1 trainer keeps the target ε − x0 for ``sigma_scaled`` (and ``additive``, x_σ + pred),
  which pushes the model away from the velocity its sampler integrates; lorakit does not copy that.
* loss weights (``weighting_scheme``), per sample: ``none`` 1, ``sigma_sqrt`` σ⁻², ``cosmap``
  2 / (π·(1 − 2σ + 2σ²)). They multiply the per-sample loss of any ``loss_type`` (l2, huber, ...).
"""

from __future__ import annotations

import math

import torch

SAMPLERS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift", "logit_normal", "mode")
WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")
PREDICTIONS = ("raw", "sigma_scaled")
TRAIN_STEPS = 1000  # the flow-match scheduler's num_train_timesteps in FLUX.1 and SD3


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = S·σ / (1 + (S − 1)·σ): more weight on noisy σ for S > 1 (SD3 paper, eq. 23)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flux_mu(image_tokens: int, base: float = 0.5, top: float = 1.15, lo: int = 256, hi: int = 4096) -> float:
    """FLUX.1's shift exponent: μ on the line through (256 tokens, 0.5) and (4096 tokens, 1.15)."""
    return base + (top - base) * (image_tokens - lo) / (hi - lo)


def time_shift(mu: float, sigma: torch.Tensor) -> torch.Tensor:
    """σ' = e^μ / (e^μ + 1/σ − 1) (FLUX.1's ``time_shift`` with exponent 1)."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))


def sigma_table(shift: float, steps: int = TRAIN_STEPS) -> torch.Tensor:
    """The flow-match Euler scheduler's training sigmas: k/steps for k = steps … 1, shifted (float32, as
    diffusers' ``FlowMatchEulerDiscreteScheduler`` builds them)."""
    s = torch.linspace(1, steps, steps, dtype=torch.float32).flip(0) / steps
    return shift_sigmas(s, shift)


def density(kind: str, n: int, *, logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """u in [0, 1] for the table samplers: uniform (``sigma``), ``logit_normal`` or ``mode``."""
    if kind == "logit_normal":
        return torch.sigmoid(torch.normal(logit_mean, logit_std, size=(n,), generator=generator))
    u = torch.rand(n, generator=generator)
    if kind == "mode":
        u = 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def draw_sigmas(n: int, args, image_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """σ [n] in (0, 1] with ``args.timestep_sampling`` (see the module docstring); drawn on the CPU from
    ``generator`` (the global RNG when None), so runs and resumes repeat exactly on any device."""
    kind = args.timestep_sampling
    if kind in ("sigma", "logit_normal", "mode"):
        u = density("sigma" if kind == "sigma" else kind, n, logit_mean=args.logit_mean, logit_std=args.logit_std,
                    mode_scale=args.mode_scale, generator=generator)
        idx = (u * TRAIN_STEPS).long().clamp(0, TRAIN_STEPS - 1)  # the mode density reaches 1.0 at u = 0
        return sigma_table(args.discrete_flow_shift)[idx]
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    if kind not in ("sigmoid", "shift", "flux_shift"):
        raise ValueError(f"timestep_sampling={kind!r}: expected one of {SAMPLERS}.")
    sigma = torch.sigmoid(args.sigmoid_scale * torch.randn(n, generator=generator))
    if kind == "shift":
        return shift_sigmas(sigma, args.discrete_flow_shift)
    if kind == "flux_shift":
        return time_shift(flux_mu(image_tokens), sigma)
    return sigma


def noisy_input(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ)·x0 + σ·ε, σ per sample."""
    s = sigma.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def prediction_and_target(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, noisy: torch.Tensor,
                          sigma: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the loss compares, its target) for ``model_prediction_type`` ``kind``."""
    if kind == "raw":
        return pred, noise - x0
    if kind == "sigma_scaled":
        s = sigma.to(pred.dtype).reshape(-1, *([1] * (pred.dim() - 1)))
        return pred * (-s) + noisy.to(pred.dtype), x0
    raise ValueError(f"model_prediction_type={kind!r}: expected one of {PREDICTIONS}.")


def loss_weights(kind: str, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights [B] of ``weighting_scheme`` ``kind``."""
    sigma = sigma.to(torch.promote_types(sigma.dtype, torch.float32))
    if kind == "sigma_sqrt":
        return sigma ** -2.0
    if kind == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma ** 2))
    if kind == "none":
        return torch.ones_like(sigma)
    raise ValueError(f"weighting_scheme={kind!r}: expected one of {WEIGHTINGS}.")


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """FLUX.1's 2×2 patches: (B, C, H, W) -> (B, H/2·W/2, 4C), channel-major inside each patch."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of ``pack_latents`` for latents of height ``h`` and width ``w``."""
    b, _, d = x.shape
    x = x.reshape(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """FLUX.1's position ids of the packed image tokens (H/2·W/2, 3): (0, row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(h // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(w // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)
