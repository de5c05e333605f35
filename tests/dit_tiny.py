"""Tiny FLUX.1- and SD3-shaped diffusers pipelines for the trainer's tests (dit-models.md §5 configs),
built offline: the character-level CLIP tokenizer of ``sd_tiny``, a T5 tokenizer made here (a
Unigram model over the same characters), 2-layer CLIP/T5 encoders and a 16-channel VAE that
downsamples by 4. Every weight is small and random, so every output is finite on any CPU.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from sd_tiny import tokenizer as clip_tokenizer

CHARS = list(string.ascii_lowercase + string.digits + ",.!")
T5_WIDTH = 32


def t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -1.0) for c in CHARS] + [("▁" + c, -1.5) for c in CHARS]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)


def t5(seed: int = 5):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=4 + 2 * len(CHARS), d_model=T5_WIDTH, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg).eval()


def clip(hidden: int, projection: bool, seed: int, projection_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    n = len(CHARS) * 2 + 2
    cfg = CLIPTextConfig(vocab_size=n, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=projection_dim,
                         bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         layers_per_block=1, norm_num_groups=4, sample_size=32, shift_factor=0.1,
                         scaling_factor=0.7, use_quant_conv=False, use_post_quant_conv=False).eval()


def flux_transformer(guidance: bool = True, seed: int = 7, layers: int = 1, single: int = 2):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=layers, num_single_layers=single,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
                                  pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=guidance).eval()


def sd3_transformer(seed: int = 8, dual: bool = False):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    extra = {"dual_attention_layers": (0,), "qk_norm": "rms_norm"} if dual else {}
    return SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=16, num_layers=2, attention_head_dim=8,
                                 num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=T5_WIDTH,
                                 pooled_projection_dim=64, out_channels=16, pos_embed_max_size=96, **extra).eval()


def scheduler(flux: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if flux:  # FLUX.1 dev's scheduler config: the shift is resolution dependent at inference
        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def components(tmp: Path, family: str, guidance: bool = True, drop_t5: bool = False) -> dict:
    """The parts the diffusion task loads, built in memory."""
    if family == "flux1":
        comps = {"transformer": flux_transformer(guidance), "text_encoder": clip(32, False, 1),
                 "tokenizer": clip_tokenizer(tmp / "clip-tok"), "text_encoder_2": t5(), "tokenizer_2": t5_tokenizer()}
    else:
        comps = {"transformer": sd3_transformer(), "text_encoder": clip(8, True, 1), "text_encoder_2": clip(16, True, 2),
                 "tokenizer": clip_tokenizer(tmp / "clip-tok"), "tokenizer_2": clip_tokenizer(tmp / "clip-tok")}
        if not drop_t5:
            comps.update(text_encoder_3=t5(), tokenizer_3=t5_tokenizer())
    comps.update(vae=vae(), scheduler_config=dict(scheduler(family == "flux1").config), family=family)
    return comps


def save_pipeline(root: Path, family: str, guidance: bool = True) -> Path:
    """A tiny FluxPipeline / StableDiffusion3Pipeline directory at ``root``."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    comps = components(root.parent / f"{root.name}-tok", family, guidance)
    names = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
             "tokenizer_3")
    kwargs = {k: comps[k] for k in names if k in comps}
    cls = FluxPipeline if family == "flux1" else StableDiffusion3Pipeline
    pipe = cls(scheduler=scheduler(family == "flux1"), **kwargs)
    pipe.save_pretrained(str(root))
    return root
