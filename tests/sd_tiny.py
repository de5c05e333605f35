"""Tiny SD1- and SDXL-shaped diffusers pipelines for the trainer's tests, saved as local directories, and a tiny
kohya dataset.

Built from configs (nothing is downloaded), as diffusers' own example tests use tiny models: a
character-level CLIP tokenizer, 2-layer CLIP encoders, the tiny U-Nets of ``sd_models`` and a VAE
that downsamples by 4 (64-pixel images -> 16x16 latents).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from sd_models import tiny_unet

CHARS = list(string.ascii_lowercase + string.digits + ",.!")


def tokenizer(root: Path):
    from transformers import CLIPTokenizer

    vocab = {c: i for i, c in enumerate(CHARS)}
    vocab.update({c + "</w>": len(CHARS) + i for i, c in enumerate(CHARS)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77)


def clip(hidden: int = 16, projection: bool = False, seed: int = 1):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    n = len(CHARS) * 2 + 2
    cfg = CLIPTextConfig(vocab_size=n, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
                         bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         layers_per_block=1, norm_num_groups=4, sample_size=64).eval()


def scheduler(prediction: str = "epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction, clip_sample=False)


def save_pipeline(root: Path, sdxl: bool = False, prediction: str = "epsilon") -> Path:
    """A tiny pipeline directory (model_index.json + components) at ``root``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    tok_dir = root.parent / f"{root.name}-tok"
    if sdxl:
        pipe = StableDiffusionXLPipeline(vae=vae(), text_encoder=clip(16), text_encoder_2=clip(16, True, 2),
                                         tokenizer=tokenizer(tok_dir), tokenizer_2=tokenizer(tok_dir),
                                         unet=tiny_unet(sdxl=True), scheduler=scheduler(prediction))
    else:
        pipe = StableDiffusionPipeline(vae=vae(), text_encoder=clip(16), tokenizer=tokenizer(tok_dir),
                                       unet=tiny_unet(), scheduler=scheduler(prediction), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(root))
    return root


def save_dataset(root: Path, n: int = 4, repeats: int = 2, size=(64, 64)) -> Path:
    """``root/<repeats>_sks dog/`` with ``n`` coloured PNGs and ``.txt`` captions; returns ``root``."""
    from PIL import Image

    folder = root / f"{repeats}_sks dog"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        pixels = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"sks dog, photo {i}, red")
    return root


def components(tmp: Path, sdxl: bool, prediction: str = "epsilon") -> dict:
    """The parts the diffusion task loads, built in memory (no pipeline directory)."""
    comps = {"unet": tiny_unet(sdxl), "text_encoder": clip(16), "tokenizer": tokenizer(tmp)}
    if sdxl:
        comps.update(text_encoder_2=clip(16, True, 2), tokenizer_2=comps["tokenizer"])
    comps["scheduler_config"] = dict(scheduler(prediction).config)
    return comps


def sd_config(tmp: Path, model: Path, images: Path, **sections) -> dict:
    """An sd.yaml mapping for the tiny pipeline (``sections`` merge into each section)."""
    cfg = {"task": "diffusion",
           "model": {"path": str(model), "device": "cpu"},
           "data": {"train_data_dir": str(images), "resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128,
                    "caption_extension": ".txt", "cache_dir": str(tmp / "cache")},
           "network": {"dim": 4, "alpha": 2},
           "train": {"output_dir": str(tmp / "run"), "output_name": "tiny", "epochs": 2, "batch_size": 2,
                     "lr": 1e-3, "progress": False, "plot": False, "seed": 0}}
    for name, extra in sections.items():
        cfg.setdefault(name, {}).update(extra)
    return cfg
