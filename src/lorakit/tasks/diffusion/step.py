"""One SD training step as a module: ``SDNetwork(batch) -> per-sample loss``.

The module holds the U-Net and the text encoders (their adapters are the trainable parameters, so
checkpoints and DDP see exactly those); the VAE and the tokenizers are kept outside the module tree
(never checkpointed, never in train mode). The step, in three parts kept apart:

1. ``condition``: text states (cached ``te_*`` tensors or the encoders on ``captions``) and latents
   (cached, or the fp32 VAE on ``pixels``, times the scaling factor, minus the shift);
2. ``predict``: noise, timesteps, x_t, the U-Net's prediction and the target (ε or v);
3. ``weigh``: the per-sample loss (l2/l1/huber) times ``loss_weight`` and the SNR weights.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .family import Family, encode_prompts, unet_kwargs
from .noise import Schedule, draw_noise, draw_timesteps, sample_losses, snr_weights


class SDNetwork(nn.Module):
    def __init__(self, family: Family, parts: dict, train_args, prediction: str):
        super().__init__()
        self.family, self.args, self.prediction = family, train_args, prediction
        self.unet = parts["unet"]
        self.text_encoders = nn.ModuleDict({k: parts[k] for k in family.text_parts if k in parts})
        # frozen helpers outside the module tree: not checkpointed, not moved to train mode
        self.__dict__["helpers"] = {k: parts.get(k) for k in ("vae", "tokenizer", "tokenizer_2")}
        vae_cfg = parts["vae"].config if parts.get("vae") is not None else {}
        self.scaling = float(getattr(vae_cfg, "scaling_factor", 0.18215) or 0.18215)
        self.shift = float(getattr(vae_cfg, "shift_factor", 0.0) or 0.0)
        self.schedule = Schedule(parts["scheduler_config"], train_args.zero_terminal_snr)
        self.timestep_log: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # -- 1. conditioning ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latents of pixels in [-1, 1]: ``(vae.encode(x).sample() - shift) * scaling`` in fp32."""
        vae = self.helpers["vae"]
        with torch.autocast(vae.device.type, enabled=False):  # fp32 even inside mixed precision: no NaN latents
            dist = vae.encode(pixels.to(vae.device, torch.float32)).latent_dist
            return (dist.sample() - self.shift) * self.scaling

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        parts = {**self.helpers, **self.text_encoders}
        return encode_prompts(self.family, parts, captions, self.args.clip_skip, self.args.max_token_length)

    def condition(self, batch: dict) -> tuple[torch.Tensor, dict]:
        latents = batch["latents"] if "latents" in batch else self.encode_latents(batch["pixels"])
        if "te_hidden" in batch:
            cond = {k[3:]: v for k, v in batch.items() if k.startswith("te_")}
        else:
            cond = self.encode_text(list(batch["captions"]))
        return latents.to(self.device, torch.float32), cond

    # -- 2. prediction -----------------------------------------------------------------------------
    def predict(self, latents: torch.Tensor, cond: dict, batch: dict, noise: torch.Tensor,
                timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U-Net prediction, target) for given noise and timesteps."""
        noisy_in = noise
        if self.args.ip_noise_gamma:
            gamma = self.args.ip_noise_gamma
            if self.args.ip_noise_gamma_random_strength:
                gamma = torch.rand(latents.shape[0], 1, 1, 1, device=latents.device) * gamma
            noisy_in = noise + gamma * torch.randn_like(latents)
        noisy = self.schedule.add_noise(latents, noisy_in, timesteps)
        dtype = next(self.unet.parameters()).dtype
        kwargs = unet_kwargs(self.family, cond, batch, latents.shape[0], dtype)
        pred = self.unet(noisy.to(dtype), timesteps, **kwargs).sample
        return pred, self.schedule.target(latents, noise, timesteps, self.prediction)

    # -- 3. weighting ------------------------------------------------------------------------------
    def weigh(self, pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
              loss_weight: torch.Tensor | None) -> torch.Tensor:
        a = self.args
        loss = sample_losses(pred, target, a, loss_weight)
        if a.min_snr_gamma is not None or a.debiased_estimation_loss:
            loss = loss * snr_weights(self.schedule.snr(timesteps), self.prediction, a.min_snr_gamma,
                                      a.debiased_estimation_loss)
        return loss

    def forward(self, batch: dict) -> torch.Tensor:
        """Mean loss of ``batch``; per-sample losses and timesteps are kept for the timestep plot. Its random
        draws (VAE sample, noise, timesteps, adapter dropout) come from the batch's ``rng_seed`` when it has one,
        so they do not depend on which process takes the batch."""
        with batch_rng(batch.get("rng_seed"), self.device):
            latents, cond = self.condition(batch)
            noise = draw_noise(latents, self.args)
            timesteps = draw_timesteps(latents.shape[0], self.args, self.schedule.num_steps, latents.device)
            pred, target = self.predict(latents, cond, batch, noise, timesteps)
        loss = self.weigh(pred, target, timesteps, batch.get("loss_weight"))
        self.timestep_log.append((timesteps.detach().cpu(), loss.detach().float().cpu()))
        return loss.mean()


@contextlib.contextmanager
def batch_rng(seed: int | None, device: torch.device):
    """torch's RNG seeded with ``seed`` inside, restored after (nothing changes when ``seed`` is None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        yield
