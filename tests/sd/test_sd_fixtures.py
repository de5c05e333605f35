"""The tiny pipelines every SD test uses are finite by construction (``tests/sd_pipes.py``): bounded outputs for
any input, encodings whose mean A1111's emphasis rescale can divide by, latents of order sigma_max and images
that are neither black nor saturated, whatever the CPU's summation order."""

import numpy as np
import pytest
import torch
from sd_models import random_lora
from sd_pipes import OFFSET, clean_parts, tiny_text_encoder, tiny_tokenizer

from lorakit.formats.sd_io import write_lora
from lorakit.sd.denoise import decode
from lorakit.sd.encode import encode_prompt
from lorakit.sd.generate import generate_images

PROMPTS = ["a red cat", "a (red:1.5) [cat] BREAK dog", "", "(((x)))"]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_encodings_have_a_mean_the_emphasis_rescale_can_divide_by(request, family):
    pipe = request.getfixturevalue(f"{family}_pipe")
    for text in PROMPTS:
        assert encode_prompt(pipe, text).embeds.mean() > OFFSET / 2, text
    plain = tiny_text_encoder(tiny_tokenizer())  # what a random CLIP gives: a mean of rounding noise
    text = getattr(plain, "text_model", plain)  # transformers 5 flattened CLIPTextModel
    with torch.no_grad():
        text.final_layer_norm.bias.zero_()
        text.embeddings.token_embedding.weight -= OFFSET
        out = plain(torch.tensor([[0, 5, 9, 13, 1]])).last_hidden_state
    assert out.mean().abs() < 1e-5


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_unet_and_vae_outputs_are_bounded_whatever_the_input(request, family):
    """Group norm before the last convolution: scaling the input by 1e6 cannot blow the output up."""
    pipe = request.getfixturevalue(f"{family}_pipe")
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=g)
    kw = {}
    if family == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 16, generator=g), "time_ids": torch.ones(1, 6) * 32}
    with torch.no_grad():
        for scale in (1.0, 1e3, 1e6):
            eps = pipe.unet(x * scale, 500, ctx * scale, **kw).sample
            image = pipe.vae.decode(x * scale).sample
            assert torch.isfinite(eps).all() and eps.abs().max() < 20, scale
            assert torch.isfinite(image).all() and image.abs().max() < 20, scale


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_images_are_neither_black_nor_saturated(request, family, tmp_path):
    pipe = request.getfixturevalue(f"{family}_pipe")
    write_lora(random_lora(clean_parts(family), seed=1), tmp_path / "s.safetensors")
    for seed, prompt in enumerate(["a red cat", "a (red:1.4) cat <lora:s:1.2>", "dog AND cat:0.5"]):
        kw = {"width": 32, "height": 32, "steps": 3, "cfg_scale": 7.0, "seed": seed, "lora_dir": tmp_path}
        latents = generate_images(pipe, prompt, "blue", output_type="latent", **kw)[0]
        assert latents.abs().max() < 50  # of order sigma_max = 14.6
        px = np.asarray(decode(pipe, latents, "")).astype(int)
        assert ((px == 0) | (px == 255)).mean() < 0.05 and px.std() > 10, prompt
