"""Model families (SD1.x, SD2.x, SD2-v, SDXL) as small strategy objects: loading the components,
encoding prompts for training, and the U-Net's extra conditioning.

* SD1/2 text (kohya ``get_hidden_states``): CLIP's last hidden state, or ``hidden_states[-clip_skip]``
  through ``final_layer_norm``. With ``max_token_length`` 150/225 the prompt is cut in 75-token chunks,
  each wrapped ``BOS … EOS`` and encoded alone, then joined without the inner BOS/EOS
  (``1 + n·75 + 1`` states).
* SDXL: text encoder 1's and 2's penultimate states side by side (768 + 1280 = 2048 features), the
  pooled embedding = encoder 2's ``text_embeds`` (the EOS state through ``text_projection``, first
  chunk), and ``time_ids = [orig_h, orig_w, crop_top, crop_left, target_h, target_w]`` from the
  real image sizes (Podell et al. 2023, §2.2). ``clip_skip`` does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: family -> kohya's ss_base_model_version
BASE_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sd2-v": "sd_v2_v", "sdxl": "sdxl_base_v1-0"}


@dataclass(frozen=True)
class Family:
    name: str
    text_parts: tuple[str, ...]
    bucket_step: int
    """Bucket sides must be multiples of this (64 for SD1/2 as kohya requires, 32 for SDXL)."""

    @property
    def sdxl(self) -> bool:
        return self.name == "sdxl"

    @property
    def base_version(self) -> str:
        return BASE_VERSIONS[self.name]

    @property
    def lora_family(self) -> str:
        """The family name lorakit's LoRA files use (sd2-v files are sd2 files)."""
        return "sd2" if self.name == "sd2-v" else self.name


FAMILIES = {"sd1": Family("sd1", ("text_encoder",), 64), "sd2": Family("sd2", ("text_encoder",), 64),
            "sd2-v": Family("sd2-v", ("text_encoder",), 64),
            "sdxl": Family("sdxl", ("text_encoder", "text_encoder_2"), 32)}


def model_bucket_step(unet_config, vae_config) -> int:
    """Pixels per cell of the U-Net's coarsest feature map: the VAE's and the U-Net's downsampling, each
    2^(levels-1). 8·8 = 64 for SD1/SD2 and 8·4 = 32 for SDXL (kohya's rules); smaller models (the tests'
    tiny pipelines, the sdworld demo's 32-pixel base) get their own step."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1) * 2 ** (len(unet_config["block_out_channels"]) - 1)


def load_components(path: str, config: str | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """{unet, vae, text_encoder[, text_encoder_2], tokenizer[, tokenizer_2], scheduler_config, family, pipe}
    from a local diffusers directory or a single-file checkpoint with a local config (``lorakit.sd.pipeline``;
    nothing is downloaded). The pipeline shares the modules, so samples use the live adapters."""
    from ...sd.pipeline import load_pipeline

    pipe, family = load_pipeline(path, config=config, dtype=dtype)
    parts = {k: getattr(pipe, k, None) for k in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer",
                                                  "tokenizer_2")}
    parts = {k: v for k, v in parts.items() if v is not None}
    # fp16 VAEs give NaN latents and black images (sd-scripts #952); float(), as diffusers' to(dtype) warns
    parts["vae"] = parts["vae"].float()
    parts.update(scheduler_config=dict(pipe.scheduler.config), family=family, pipe=pipe)
    return parts


def chunk_ids(tokenizer, captions: list[str], max_token_length: int | None) -> torch.Tensor:
    """Token ids [B, n, 77]: the prompt cut in n = max_token_length/75 chunks, each ``BOS … EOS``-wrapped."""
    n = (max_token_length or 75) // 75
    width = tokenizer.model_max_length  # 77
    ids = tokenizer(captions, padding="max_length", truncation=True, max_length=n * (width - 2) + 2,
                    return_tensors="pt").input_ids
    if n == 1:
        return ids[:, None]
    bos, eos, body = ids[:, :1], ids[:, -1:], ids[:, 1:-1]
    chunks = []
    for i in range(n):
        chunk = torch.cat([bos, body[:, i * (width - 2):(i + 1) * (width - 2)], eos], 1)
        pad = tokenizer.pad_token_id
        if pad != tokenizer.eos_token_id:  # SD2 pads with "!": end a cut chunk with EOS, mark an empty one
            cut = (chunk[:, -2] != pad) & (chunk[:, -2] != tokenizer.eos_token_id)
            chunk[cut, -1] = tokenizer.eos_token_id
            chunk[chunk[:, 1] == pad, 1] = tokenizer.eos_token_id
        chunks.append(chunk)
    return torch.stack(chunks, 1)


def _final_norm(encoder: nn.Module) -> nn.Module:
    inner = getattr(encoder, "text_model", encoder)  # transformers 5's CLIPTextModel dropped text_model
    return inner.final_layer_norm


def encode_chunks(encoder: nn.Module, ids: torch.Tensor, layer: int | None, norm: bool,
                  pooled: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """States [B, 1 + n·75 + 1, d] of chunked ids [B, n, 77] (inner BOS/EOS dropped) and, with
    ``pooled``, the first chunk's ``text_embeds``. ``layer`` None: last hidden state; else that index."""
    b, n, w = ids.shape
    out = encoder(ids.reshape(b * n, w).to(encoder.device), output_hidden_states=layer is not None)
    if layer is None:
        h = out.last_hidden_state
    else:
        h = out.hidden_states[layer]
        if norm:
            h = _final_norm(encoder)(h)
    h = h.reshape(b, n, w, -1)
    if n > 1:
        h = torch.cat([h[:, 0, :1], h[:, :, 1:-1].reshape(b, n * (w - 2), -1), h[:, -1, -1:]], 1)
    else:
        h = h[:, 0]
    pool = out.text_embeds.reshape(b, n, -1)[:, 0] if pooled else None
    return h, pool


def encode_prompts(family: Family, parts: dict, captions: list[str], clip_skip: int | None,
                   max_token_length: int | None) -> dict[str, torch.Tensor]:
    """The U-Net's text conditioning for ``captions``: ``{"hidden": [B, L, d]}`` (+ ``"pooled"`` for SDXL)."""
    if not family.sdxl:
        ids = chunk_ids(parts["tokenizer"], captions, max_token_length)
        skip = clip_skip if clip_skip and clip_skip > 1 else None
        hidden, _ = encode_chunks(parts["text_encoder"], ids, -skip if skip else None, norm=True)
        return {"hidden": hidden}
    h1, _ = encode_chunks(parts["text_encoder"], chunk_ids(parts["tokenizer"], captions, max_token_length), -2,
                          norm=False)
    h2, pooled = encode_chunks(parts["text_encoder_2"], chunk_ids(parts["tokenizer_2"], captions, max_token_length),
                               -2, norm=False, pooled=True)
    return {"hidden": torch.cat([h1, h2.to(h1.dtype)], -1), "pooled": pooled}


def time_ids(batch: dict, n: int, device) -> torch.Tensor:
    """SDXL micro-conditioning [B, 6]: original size (h, w), crop (top, left), target size (h, w)."""
    if "original_size" not in batch:
        raise ValueError("an SDXL batch needs original_size, crop_top_left and target_size (the dataset adds them).")
    ids = torch.cat([batch["original_size"], batch["crop_top_left"], batch["target_size"]], 1)
    return ids[:n].to(device=device, dtype=torch.float32)


def unet_kwargs(family: Family, cond: dict, batch: dict, n: int, dtype: torch.dtype) -> dict:
    """Keyword arguments of ``unet(noisy, t, **kwargs)`` for this family."""
    kwargs = {"encoder_hidden_states": cond["hidden"].to(dtype)}
    if family.sdxl:
        kwargs["added_cond_kwargs"] = {"text_embeds": cond["pooled"].to(dtype),
                                       "time_ids": time_ids(batch, n, cond["hidden"].device).to(dtype)}
    return kwargs
