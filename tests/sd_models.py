"""Tiny Stable Diffusion parts built from configs (no downloads) and random kohya LoRA files for them."""

from __future__ import annotations

import torch
from torch import nn

from lorakit.formats.lorafile import LoraFile, Naming
from lorakit.formats.sd_keys import canonical_te, layout_from_config

TE_TARGETS = ("CLIPAttention", "CLIPMLP")
UNET_TARGETS = ("Transformer2DModel",)
CONV_TARGETS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")


def tiny_unet(sdxl: bool = False):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if sdxl:  # SDXL's block structure: no attention in the first down / last up block, text_time embeddings
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 2), attention_head_dim=(2, 4, 4), norm_num_groups=4,
            cross_attention_dim=32, use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=4, projection_class_embeddings_input_dim=4 * 6 + 16)
    else:
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=2, norm_num_groups=4, cross_attention_dim=16)
    return unet.eval()


def tiny_clip(hidden: int = 16, projection: bool = False, seed: int = 1):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=8, projection_dim=16,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(cfg).eval()


def sd1_parts():
    return {"unet": tiny_unet(), "text_encoder": tiny_clip(16)}


def sdxl_parts():
    return {"unet": tiny_unet(sdxl=True), "text_encoder": tiny_clip(16), "text_encoder_2": tiny_clip(16, True, 2)}


def targets(model: nn.Module, classes) -> list[str]:
    """kohya's rule: Linear/Conv2d children of modules whose class is in ``classes``."""
    out = []
    for name, module in model.named_modules():
        if type(module).__name__ in classes:
            for child, sub in module.named_modules():
                if child and isinstance(sub, (nn.Linear, nn.Conv2d)):
                    out.append(f"{name}.{child}")
    return out


def random_lora(parts: dict, rank: int = 4, seed: int = 0, conv: bool = False, alpha: float | None = 2.0,
                dtype=torch.float32) -> LoraFile:
    """A kohya-style LoraFile with random non-zero factors for kohya's default targets (+LoCon if ``conv``)."""
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for part, model in parts.items():
        classes = TE_TARGETS if part.startswith("text") else UNET_TARGETS + (CONV_TARGETS if conv else ())
        for path in targets(model, classes):
            w = model.get_submodule(path).weight
            down_shape = (rank, *w.shape[1:])
            up_shape = (w.shape[0], rank, *([1, 1] if w.dim() == 4 else []))
            t = {"lora_down.weight": (torch.randn(down_shape, generator=g) * 0.3).to(dtype),
                 "lora_up.weight": (torch.randn(up_shape, generator=g) * 0.3).to(dtype)}
            if alpha is not None:
                t["alpha"] = torch.tensor(alpha, dtype=dtype)
            modules[f"{part}.{canonical_te(path) if part != 'unet' else path}"] = t
    sdxl = "text_encoder_2" in parts
    layout = layout_from_config(parts["unet"].config) if "unet" in parts else None
    naming = Naming("sai" if sdxl else "diffusers", sdxl, layout) if layout else Naming(te_split=sdxl)
    return LoraFile(modules, {}, naming)


@torch.no_grad()
def unet_out(unet, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 5, cfg.cross_attention_dim, generator=g)
    kw = {}
    if cfg.addition_embed_type == "text_time":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 16, generator=g),
                                   "time_ids": torch.randn(2, 6, generator=g)}
    return unet(x, torch.tensor([10, 500]), ctx, **kw).sample


@torch.no_grad()
def te_out(te):
    ids = torch.tensor([[1, 5, 9, 13, 2], [3, 7, 11, 2, 0]])
    return te(ids).last_hidden_state
