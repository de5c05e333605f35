"""The tiny latent text-to-image model, built from the diffusers/transformers classes SD 1.5 uses.

AutoencoderKL (3 levels: 32x32 pixels -> 8x8x4 latents), CLIPTextModel + CLIPTokenizer (a BPE vocabulary
trained here on the world's words, so every word is one token), UNet2DConditionModel with cross-attention
at both levels, and SD 1.5's PNDM scheduler config. ``save_pipeline`` writes an ordinary
``StableDiffusionPipeline`` directory that diffusers and every lorakit SD tool load like SD 1.5.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from .world import COLOURS, SHAPES, TRIGGER

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Words the world never uses still get their own token, so prompts about other things stay readable.
EXTRA_WORDS = ("hexagon heart moon diamond star dog cat photo picture painting of with and in at the an big small "
               "large tiny left right top bottom centre center purple orange pink grey gray brown cyan "
               "bright dark shape object drawing image style ohwx zwx").split()
WORDS = sorted({"a", "on", "background", TRIGGER, *SHAPES, *COLOURS, *EXTRA_WORDS})
PUNCT = list(",.:;()[]!?'\"-_<>/0123456789")


def build_tokenizer(out_dir: Path):
    """Train a CLIP-format BPE (vocab.json + merges.txt) on the world's words and load it as CLIPTokenizer.

    CLIPTokenizer reads the same two files as openai/clip-vit-large-patch14's tokenizer; BPE is trained
    with the ``</w>`` end-of-word suffix CLIP uses, large enough that every word in ``WORDS`` is one token.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = list("abcdefghijklmnopqrstuvwxyz") + PUNCT
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=[BOS, EOS], initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator([" ".join(WORDS)] * 4 + [" ".join(PUNCT)], trainer)
    vocab = tok.get_vocab()
    # CLIP also has every single character as a word-final token; add the ones BPE did not make.
    for ch in alphabet:
        vocab.setdefault(ch + "</w>", len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        tok.model.save(tmp)
        merges = (Path(tmp) / "merges.txt").read_text().splitlines()
    merges = [m for m in merges if not m.startswith("#")]
    (out_dir / "vocab.json").write_text(json.dumps(vocab, indent=0, sort_keys=True))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=77,
                              bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    split = [w for w in WORDS if len(tokenizer.tokenize(w)) != 1]
    if split:
        raise RuntimeError(f"tokenizer splits words {split}; raise the BPE vocab_size")
    return tokenizer


BLOCKS = (64, 64)  # U-Net widths; on 8x8 latents (64, 64) costs 20% more per step than (32, 64)


def build_models(tokenizer, seed: int = 0) -> dict:
    """Fresh (untrained) vae, text_encoder, unet and scheduler of the sdworld shape."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32)
    te_cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=64,
                            hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(te_cfg)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=BLOCKS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4, norm_num_groups=16,
        cross_attention_dim=64)
    # SD 1.5's scheduler config, verbatim (the samplers swap it via from_config).
    scheduler = PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
                              set_alpha_to_one=False)
    return {"vae": vae, "text_encoder": text_encoder, "unet": unet, "scheduler": scheduler}


def save_pipeline(models: dict, tokenizer, out_dir: Path, dtype=torch.float16) -> None:
    """Write a StableDiffusionPipeline directory (safetensors weights in ``dtype``)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=models["vae"], text_encoder=models["text_encoder"], tokenizer=tokenizer,
                                   unet=models["unet"], scheduler=models["scheduler"], safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=dtype)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    pipe.to(dtype=torch.float32)


def load_pipeline(path: Path, device: str = "cpu"):
    """The saved pipeline in float32 (diffusers' own loader, as any user would)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
