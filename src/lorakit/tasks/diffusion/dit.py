"""FLUX.1 and SD3 as family strategy objects: their parts, prompt encoding for training and the
transformer call (the objective itself is in ``flow``).

* FLUX.1 (diffusers ``FluxPipeline``): CLIP-L's pooled output (``pooler_output``, 77 tokens) becomes
  ``pooled_projections``; T5's last hidden state (``t5xxl_max_token_length`` tokens, 512 for dev, 256
  for schnell) becomes ``encoder_hidden_states`` with zero ``txt_ids``. Latents are packed in 2×2
  patches with ``img_ids``; a guidance-distilled model (dev: ``guidance_embeds``) gets ``guidance``
  (``train.guidance_scale``, 1.0 by default as kohya, SimpleTuner and ai-toolkit train). With
  ``apply_t5_attn_mask`` the T5 padding mask goes into T5 and into the transformer's joint attention
  (the padded text tokens are never attended), as kohya does.
* SD3/3.5 (``StableDiffusion3Pipeline``): CLIP-L and CLIP-G penultimate states side by side
  (768 + 1280 features), zero-padded to T5's width and followed on the sequence axis by T5's states
  (256 tokens); pooled = CLIP-L's and CLIP-G's projected EOS embeddings side by side. Without T5
  (``model.drop_t5``) its states are zeros of the same length, as diffusers' pipeline runs without
  ``text_encoder_3``. The transformer takes the unpacked latents and ``timestep = 1000·σ``.

Both VAEs have 16 channels and store ``shift_factor``/``scaling_factor``: latents = (z − shift)·scale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .flow import image_ids, pack_latents, unpack_latents


@dataclass(frozen=True)
class DitFamily:
    name: str
    clip_parts: tuple[str, ...]
    """The CLIP text encoders (LoRA targets unless ``network.train_unet_only``)."""
    t5_part: str
    """Where the pipeline keeps T5 (a LoRA target only with ``network.train_t5xxl``)."""
    block_classes: tuple[str, ...]
    """Transformer block classes whose Linear layers kohya adapts."""
    base_version: str
    """kohya's ``ss_base_model_version``."""

    @property
    def lora_family(self) -> str:
        return self.name

    def text_parts(self, train_t5: bool) -> tuple[str, ...]:
        return self.clip_parts + ((self.t5_part,) if train_t5 else ())


FLUX1 = DitFamily("flux1", ("text_encoder",), "text_encoder_2", ("FluxTransformerBlock", "FluxSingleTransformerBlock"),
                  "flux1")
SD3 = DitFamily("sd3", ("text_encoder", "text_encoder_2"), "text_encoder_3", ("JointTransformerBlock",), "sd3")
DIT_FAMILIES = {"flux1": FLUX1, "sd3": SD3}


def dit_family_of_dir(directory: Path) -> str | None:
    """``flux1``/``sd3`` from a diffusers directory's model_index.json, None for other pipelines."""
    from ...sd.pipeline import DIT_PIPELINES

    index = Path(directory) / "model_index.json"
    if not index.is_file():
        return None
    return DIT_PIPELINES.get(json.loads(index.read_text()).get("_class_name", ""))


def t5_length(family: DitFamily, transformer_config, configured: int | None) -> int:
    """T5 tokens: the configured number, else kohya's defaults (FLUX.1 dev 512, schnell 256, SD3 256)."""
    if configured:
        return configured
    if family.name == "flux1" and transformer_config.get("guidance_embeds", False):
        return 512
    return 256


def bucket_step(transformer_config, vae_config) -> int:
    """Pixels per transformer token: the VAE's downsampling times the patch (2×2 packing for FLUX.1,
    ``patch_size`` for SD3): 16 for the real models, smaller for the tests' tiny ones."""
    vae = 2 ** (len(vae_config["block_out_channels"]) - 1)
    return vae * max(2, int(transformer_config.get("patch_size", 1)))


def _tokens(tokenizer, captions: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return out.input_ids, out.attention_mask


def _clip(encoder: nn.Module, tokenizer, captions: list[str], mask: bool) -> tuple[torch.Tensor, object]:
    """(attention mask, CLIP output with hidden states) of ``captions`` at 77 tokens."""
    ids, attn = _tokens(tokenizer, captions, tokenizer.model_max_length)
    out = encoder(ids.to(encoder.device), attention_mask=attn.to(encoder.device) if mask else None,
                  output_hidden_states=True)
    return attn, out


def _t5(encoder: nn.Module, tokenizer, captions: list[str], length: int, mask: bool):
    ids, attn = _tokens(tokenizer, captions, length)
    out = encoder(ids.to(encoder.device), attention_mask=attn.to(encoder.device) if mask else None)
    return out.last_hidden_state, attn


def encode_flux(parts: dict, captions: list[str], t5_tokens: int, t5_mask: bool) -> dict[str, torch.Tensor]:
    """{"t5": [B, L, d_t5], "pooled": [B, d_clip], "t5_mask": [B, L]} for FLUX.1."""
    _, clip = _clip(parts["text_encoder"], parts["tokenizer"], captions, False)
    t5, attn = _t5(parts["text_encoder_2"], parts["tokenizer_2"], captions, t5_tokens, t5_mask)
    return {"t5": t5, "pooled": clip.pooler_output, "t5_mask": attn.to(t5.device, torch.float32)}


def encode_sd3(parts: dict, captions: list[str], t5_tokens: int, t5_mask: bool, lg_mask: bool,
               t5_width: int) -> dict[str, torch.Tensor]:
    """{"lg": [B, 77, d_l + d_g], "t5": [B, L, d_t5], "pooled": [B, p_l + p_g]} for SD3 (T5 zeros when absent)."""
    _, l_out = _clip(parts["text_encoder"], parts["tokenizer"], captions, lg_mask)
    _, g_out = _clip(parts["text_encoder_2"], parts["tokenizer_2"], captions, lg_mask)
    lg = torch.cat([l_out.hidden_states[-2], g_out.hidden_states[-2].to(l_out.hidden_states[-2].dtype)], -1)
    pooled = torch.cat([l_out.text_embeds, g_out.text_embeds.to(l_out.text_embeds.dtype)], -1)
    if parts.get("text_encoder_3") is not None:
        t5, _ = _t5(parts["text_encoder_3"], parts["tokenizer_3"], captions, t5_tokens, t5_mask)
    else:
        t5 = torch.zeros(len(captions), t5_tokens, t5_width, device=lg.device, dtype=lg.dtype)
    return {"lg": lg, "t5": t5, "pooled": pooled}


def encode_prompts(family: DitFamily, parts: dict, captions: list[str], *, t5_tokens: int, t5_mask: bool,
                   lg_mask: bool = False, t5_width: int = 0) -> dict:
    """The transformer's text conditioning for ``captions`` (see the module docstring)."""
    if family.name == "flux1":
        return encode_flux(parts, captions, t5_tokens, t5_mask)
    return encode_sd3(parts, captions, t5_tokens, t5_mask, lg_mask, t5_width)


def sd3_context(cond: dict) -> torch.Tensor:
    """SD3's ``encoder_hidden_states``: the CLIP states zero-padded to T5's width, then T5's states."""
    lg, t5 = cond["lg"], cond["t5"]
    lg = torch.nn.functional.pad(lg, (0, t5.shape[-1] - lg.shape[-1]))
    return torch.cat([lg, t5.to(lg.dtype)], -2)


def run_transformer(family: DitFamily, transformer: nn.Module, noisy: torch.Tensor, sigma: torch.Tensor,
                    cond: dict, guidance: float, t5_mask: bool) -> torch.Tensor:
    """The transformer's prediction for the unpacked noisy latents [B, C, H, W] at σ [B], unpacked."""
    dtype = next(transformer.parameters()).dtype
    b, _, h, w = noisy.shape
    if family.name == "sd3":
        return transformer(hidden_states=noisy.to(dtype), timestep=(sigma * 1000).to(dtype),
                           encoder_hidden_states=sd3_context(cond).to(dtype),
                           pooled_projections=cond["pooled"].to(dtype), return_dict=False)[0]
    txt = cond["t5"].to(dtype)
    kwargs = {}
    if transformer.config.get("guidance_embeds", False):
        kwargs["guidance"] = torch.full((b,), float(guidance), device=noisy.device, dtype=torch.float32)
    if t5_mask:  # keys: the text tokens' mask, then every image token (kohya's joint attention mask)
        keep = torch.cat([cond["t5_mask"].to(noisy.device) > 0.5,
                          torch.ones(b, (h // 2) * (w // 2), dtype=torch.bool, device=noisy.device)], 1)
        kwargs["joint_attention_kwargs"] = {"attention_mask": keep[:, None, None, :]}
    out = transformer(hidden_states=pack_latents(noisy).to(dtype), timestep=sigma.to(dtype),
                      encoder_hidden_states=txt, pooled_projections=cond["pooled"].to(dtype),
                      img_ids=image_ids(h, w, noisy.device, dtype),
                      txt_ids=torch.zeros(txt.shape[1], 3, device=noisy.device, dtype=dtype), return_dict=False,
                      **kwargs)[0]
    return unpack_latents(out, h, w)


def image_tokens(family: DitFamily, transformer_config, h: int, w: int) -> int:
    """Image tokens of latents h×w (the count FLUX.1's resolution-dependent shift reads)."""
    p = 2 if family.name == "flux1" else int(transformer_config.get("patch_size", 1))
    return (h // p) * (w // p)
