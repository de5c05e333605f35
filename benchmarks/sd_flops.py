"""How much of an SD LoRA training step can caches save? FLOPs per image, counted on the meta device.

The diffusers scripts run the VAE encoder and the text encoder(s) every step; lorakit's latent and
text-encoder caches run them once per image. So one cached epoch costs at best U / (U + V + T) of the
scripts' epoch, where U is the U-Net's LoRA training step (forward + backward to the adapters), V the VAE
encode and T the text encoder(s), all per image. Counted with ``torch.utils.flop_counter`` on meta tensors
(no weights, nothing downloaded), for real SD 1.5 (512 px), SDXL (1024 px) and for the small model of
``sd_train.py`` (256 px), whose measured epoch ratio can be held against its bound.

    .venv/bin/python benchmarks/sd_flops.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
RANK = 16


def sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=2, norm_num_groups=32)


def clip(width, layers, heads, with_projection=False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=77, projection_dim=width)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def sd15():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    return {"unet": unet, "vae": sd_vae(), "text": [clip(768, 12, 12)], "px": 512, "ctx": 768, "added": None}


def sdxl():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    added = {"text_embeds": torch.zeros(1, 1280), "time_ids": torch.zeros(1, 6)}
    return {"unet": unet, "vae": sd_vae(), "text": [clip(768, 12, 12), clip(1280, 32, 20, True)], "px": 1024,
            "ctx": 2048, "added": added}


def bench_model():
    from sd_train import CONTEXT, build_parts, build_unet

    parts = build_parts()  # the very VAE and text encoder the epoch benchmark times
    return {"unet": build_unet(), "vae": parts["vae"], "text": [parts["text_encoder"]], "px": 256, "ctx": CONTEXT,
            "added": None}


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count(parts: dict) -> dict[str, float]:
    """GFLOPs per image: U-Net LoRA step (PEFT rank 16 on kohya's targets), VAE encode, text encoder(s)."""
    from peft import LoraConfig

    from lorakit.tasks.diffusion.network import UNET_CLASSES, kohya_targets

    unet, px = parts["unet"].requires_grad_(False), parts["px"]
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=kohya_targets(unet, UNET_CLASSES)))
    lat = torch.zeros(1, 4, px // 8, px // 8)
    ctx = torch.zeros(1, 77, parts["ctx"])
    added = {"added_cond_kwargs": parts["added"]} if parts["added"] else {}

    def unet_step():
        unet(lat, torch.tensor([500]), ctx, **added).sample.float().pow(2).mean().backward()

    ids = torch.zeros(1, 77, dtype=torch.long)
    return {"U-Net LoRA step": flops(unet_step) / 1e9,
            "VAE encode": flops(lambda: parts["vae"].encode(torch.zeros(1, 3, px, px))) / 1e9,
            "text encoder(s)": sum(flops(lambda te=te: te(ids)) for te in parts["text"]) / 1e9}


def main():
    print("| model | U-Net LoRA step GFLOP | VAE encode GFLOP | text encoder(s) GFLOP | best cached/uncached epoch |\n"
          "|---|---|---|---|---|")
    for name, build in (("SD 1.5, 512 px", sd15), ("SDXL, 1024 px", sdxl), ("sd_train.py model, 256 px", bench_model)):
        with torch.device("meta"), torch.no_grad():
            parts = build()
        with torch.device("meta"):
            g = count(parts)
        bound = g["U-Net LoRA step"] / sum(g.values())
        print(f"| {name} | {g['U-Net LoRA step']:.0f} | {g['VAE encode']:.0f} | {g['text encoder(s)']:.1f} | {bound:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
