"""The tiny Stable Diffusion pipelines every SD test uses (SD1.x- and SDXL-shaped), their parts, a tiny kohya
dataset and sd.yaml, all built from configs: nothing is downloaded.

The tokenizer is a CLIP BPE with one token per byte-character (+ its ``</w>`` form) and two merges, so "cat"
and "red" are one token each. The U-Nets are ``sd_models.tiny_unet``; the VAE downsamples by 4, so the
native size is 8 (U-Net sample size) x 4 = 32 pixels.

Finite by construction, on any CPU. Every output of these networks is bounded whatever their input: the
U-Net and the VAE decoder end in group norm -> SiLU -> conv, so ``|out| <= sum|w| * sqrt(group size) + |b|``,
and CLIP ends in a layer norm. What random weights do not give is a well-conditioned A1111 emphasis
rescale, ``z * mean(z) / mean(z * w)``: a random CLIP's final norm centres every token, so both means are
rounding noise (about 1e-8) and their ratio depends on the CPU's summation order. Here the token
embeddings are shifted and the final norm's bias set so every hidden state has a mean near ``OFFSET``. The
noise schedule is SD's (sigma_max 14.6; diffusers' default linear betas give 157 and latents in the
hundreds). ``tests/sd/test_sd_fixtures.py`` checks these properties.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from sd_models import tiny_unet

HIDDEN = 16
OFFSET = 0.5  # mean of the text encoders' hidden states


def _bytes_to_unicode():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def tiny_tokenizer(pad_is_eos: bool = True):
    """A CLIPTokenizer with every byte-char token (+ its ``</w>`` form), a few merges, BOS and EOS last;
    ``pad_is_eos=False`` pads with "!" as SD2/SDXL's OpenCLIP tokenizer does."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    merges = [("c", "a"), ("ca", "t</w>"), ("r", "e"), ("re", "d</w>")]  # "cat", "red": one token each
    tokens += ["ca", "cat</w>", "re", "red</w>"]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    kw = {} if pad_is_eos else {"pad_token": "!"}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, **kw)


@torch.no_grad()
def tiny_text_encoder(tok, projection: bool = False, seed: int = 1, hidden: int = HIDDEN):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()
    text = getattr(model, "text_model", model)
    text.embeddings.token_embedding.weight += OFFSET  # hidden states (SDXL's penultimate layer) off zero mean
    text.final_layer_norm.bias.fill_(OFFSET)  # last_hidden_state too
    return model


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=4, sample_size=64).eval()
    return vae


def scheduler(prediction: str = "epsilon"):
    """SD's training noise schedule (scaled-linear betas 0.00085..0.012) as a DDPM scheduler."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction, clip_sample=False, steps_offset=1)


def components(sdxl: bool = False, prediction: str = "epsilon") -> dict:
    """The parts the diffusion task loads, built in memory (no pipeline directory)."""
    comps = {"unet": tiny_unet(sdxl), "text_encoder": tiny_text_encoder(tiny_tokenizer()),
             "tokenizer": tiny_tokenizer()}
    if sdxl:
        comps.update(text_encoder_2=tiny_text_encoder(tiny_tokenizer(False), projection=True, seed=2),
                     tokenizer_2=tiny_tokenizer(False))
    comps["scheduler_config"] = dict(scheduler(prediction).config)
    return comps


def tiny_pipe(sdxl: bool = False, prediction: str = "epsilon"):
    """A whole tiny pipeline (diffusers ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    comps = components(sdxl, prediction)
    parts = {k: v for k, v in comps.items() if k != "scheduler_config"}
    if sdxl:
        return StableDiffusionXLPipeline(vae=tiny_vae(), scheduler=scheduler(prediction), **parts)
    return StableDiffusionPipeline(vae=tiny_vae(), scheduler=scheduler(prediction), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False, **parts)


def tiny_sd1():
    return tiny_pipe(False)


def tiny_sdxl():
    return tiny_pipe(True)


def saved(pipe, directory) -> Path:
    """Save a pipeline as a diffusers directory (what ``lorakit sd`` and the trainer read)."""
    pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def save_pipeline(root: Path, sdxl: bool = False, prediction: str = "epsilon") -> Path:
    """A tiny pipeline directory (model_index.json + components) at ``root``."""
    return saved(tiny_pipe(sdxl, prediction), root)


@functools.cache
def clean_parts(family: str = "sd1") -> dict:
    """Adapter-free parts with the tiny pipelines' module names and shapes, for making LoRA files (a shared
    pipeline may already carry live adapters, whose wrapped layers are no targets)."""
    comps = components(family == "sdxl")
    return {k: comps[k] for k in ("unet", "text_encoder", "text_encoder_2") if k in comps}


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
