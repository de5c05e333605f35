"""Whole tiny Stable Diffusion pipelines (SD1.x and SDXL) built from configs, with a CLIP tokenizer made from
a local vocab written here (one token per character, as CLIP's byte-level BPE with no merges): no downloads."""

from __future__ import annotations

from pathlib import Path

import torch

HIDDEN = 16


def _bytes_to_unicode():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def tiny_tokenizer(pad_is_eos: bool = True):
    """A CLIPTokenizer with every byte-char token (+ its ``</w>`` form), a few merges, BOS and EOS last."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    merges = [("c", "a"), ("ca", "t</w>"), ("r", "e"), ("re", "d</w>")]  # "cat", "red": one token each
    tokens += ["ca", "cat</w>", "re", "red</w>"]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    kw = {} if pad_is_eos else {"pad_token": "!"}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, **kw)


def tiny_text_encoder(tok, projection: bool = False, seed: int = 1, hidden: int = HIDDEN):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(cfg).eval()


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, sample_size=32).eval()


def tiny_sd1():
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from sd_models import tiny_unet

    tok = tiny_tokenizer()
    return StableDiffusionPipeline(vae=tiny_vae(), text_encoder=tiny_text_encoder(tok), tokenizer=tok,
                                   unet=tiny_unet(), scheduler=EulerDiscreteScheduler(steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from sd_models import tiny_unet

    tok = tiny_tokenizer()
    tok2 = tiny_tokenizer(pad_is_eos=False)
    return StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=tiny_text_encoder(tok), tokenizer=tok,
                                     text_encoder_2=tiny_text_encoder(tok2, projection=True, seed=2),
                                     tokenizer_2=tok2, unet=tiny_unet(sdxl=True),
                                     scheduler=EulerDiscreteScheduler(steps_offset=1))


def saved(pipe, directory) -> Path:
    """Save a pipeline as a diffusers directory (what ``lorakit sd`` reads)."""
    pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)
