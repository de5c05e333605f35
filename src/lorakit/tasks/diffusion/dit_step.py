"""One FLUX.1 / SD3 training step as a module: ``DitNetwork(batch) -> mean loss``.

The same three parts as the U-Net step (``step.SDNetwork``), kept apart so that the loss options
(l2/l1/huber, per-sample weights) apply to every family:

1. ``condition``: latents (cached, or the fp32 VAE: (z − shift)·scale) and text states (cached
   ``te_*`` tensors or the encoders on ``captions``);
2. ``predict``: σ, x_σ, the transformer's prediction and the target (``flow.prediction_and_target``);
3. ``weigh``: the per-sample loss times ``loss_weight`` (regularization images) and the σ weighting.

The transformer and the text encoders are submodules (their adapters are the trainable parameters);
the VAE and the tokenizers stay outside the module tree.
"""

from __future__ import annotations

import torch
from torch import nn

from .dit import DitFamily, encode_prompts, image_tokens, run_transformer
from .flow import draw_sigmas, loss_weights, noisy_input, prediction_and_target
from .noise import draw_noise, sample_losses
from .step import SDNetwork, batch_rng

NUM_STEPS = 1000  # σ·1000 is logged as the timestep (the loss-by-timestep plot reads 0-999)


class DitNetwork(nn.Module):
    def __init__(self, family: DitFamily, parts: dict, train_args, prediction: str, t5_tokens: int):
        super().__init__()
        self.family, self.args, self.prediction, self.t5_tokens = family, train_args, prediction, t5_tokens
        self.transformer = parts["transformer"]
        names = ("text_encoder", "text_encoder_2", "text_encoder_3")
        self.text_encoders = nn.ModuleDict({k: parts[k] for k in names if parts.get(k) is not None})
        self.__dict__["helpers"] = {k: parts.get(k) for k in ("vae", "tokenizer", "tokenizer_2", "tokenizer_3")}
        vae_cfg = parts["vae"].config if parts.get("vae") is not None else {}
        self.scaling = float(getattr(vae_cfg, "scaling_factor", 1.0) or 1.0)
        self.shift = float(getattr(vae_cfg, "shift_factor", 0.0) or 0.0)
        self.t5_width = int(self.transformer.config.get("joint_attention_dim", 0))
        self.timestep_log: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    # -- 1. conditioning ---------------------------------------------------------------------------
    encode_latents = SDNetwork.encode_latents  # (vae.encode(x).sample() − shift)·scale in fp32

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        a = self.args
        return encode_prompts(self.family, {**self.helpers, **self.text_encoders}, captions, t5_tokens=self.t5_tokens,
                              t5_mask=a.apply_t5_attn_mask, lg_mask=a.apply_lg_attn_mask, t5_width=self.t5_width)

    def condition(self, batch: dict) -> tuple[torch.Tensor, dict]:
        latents = batch["latents"] if "latents" in batch else self.encode_latents(batch["pixels"])
        cached = {k[3:]: v for k, v in batch.items() if k.startswith("te_")}
        cond = cached or self.encode_text(list(batch["captions"]))
        return latents.to(self.device, torch.promote_types(latents.dtype, torch.float32)), cond  # fp32 at least

    # -- 2. prediction -----------------------------------------------------------------------------
    def draw_sigmas(self, latents: torch.Tensor) -> torch.Tensor:
        tokens = image_tokens(self.family, self.transformer.config, *latents.shape[-2:])
        return draw_sigmas(latents.shape[0], self.args, tokens).to(latents.device)

    def predict(self, latents: torch.Tensor, cond: dict, noise: torch.Tensor,
                sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the loss compares, its target) for given noise and σ."""
        noisy_in = noise
        if self.args.ip_noise_gamma:  # input perturbation (Ning et al. 2023): the target keeps ε
            gamma = self.args.ip_noise_gamma
            if self.args.ip_noise_gamma_random_strength:
                gamma = torch.rand(latents.shape[0], 1, 1, 1, device=latents.device) * gamma
            noisy_in = noise + gamma * torch.randn_like(latents)
        noisy = noisy_input(latents, noisy_in, sigma)
        pred = run_transformer(self.family, self.transformer, noisy, sigma, cond, self.args.guidance_scale,
                               self.args.apply_t5_attn_mask)
        return prediction_and_target(pred.to(latents.dtype), latents, noise, noisy, sigma, self.prediction)

    # -- 3. weighting ------------------------------------------------------------------------------
    def weigh(self, pred: torch.Tensor, target: torch.Tensor, sigma: torch.Tensor,
              loss_weight: torch.Tensor | None) -> torch.Tensor:
        loss = sample_losses(pred, target, self.args, loss_weight)
        return loss * loss_weights(self.args.weighting_scheme, sigma).to(loss.device)

    def forward(self, batch: dict) -> torch.Tensor:
        """Mean loss of ``batch``; its random draws (VAE sample, noise, σ, adapter dropout) come from the batch's
        ``rng_seed`` when it has one, so they do not depend on which process takes the batch."""
        with batch_rng(batch.get("rng_seed"), self.device):
            latents, cond = self.condition(batch)
            noise = draw_noise(latents, self.args)
            sigma = self.draw_sigmas(latents)
            pred, target = self.predict(latents, cond, noise, sigma)
        loss = self.weigh(pred, target, sigma, batch.get("loss_weight"))
        steps = (sigma.detach().cpu() * NUM_STEPS).long().clamp(0, NUM_STEPS - 1)
        self.timestep_log.append((steps, loss.detach().float().cpu()))
        return loss.mean()
