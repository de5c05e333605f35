"""FLUX.1/SD3 generation: local pipeline directories, LoRA tags across formats, guidance vs CFG, flow-match
schedules, T5 emphasis as Forge weights it, Forge's infotext, and the CLI."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from dit_models import clip, flux_pipe, flux_transformer, random_dit_lora, reference, sd3_pipe
from typer.testing import CliRunner

import lorakit.sd.dit as dit
from lorakit.cli import app, commands  # noqa: F401  (registers the commands)
from lorakit.formats.sd_io import write_lora
from lorakit.sd.generate import generate_images
from lorakit.sd.infotext import parse_infotext
from lorakit.sd.loras import LoraStack
from lorakit.sd.pipeline import load_pipeline

KW = {"width": 16, "height": 16, "steps": 1, "seed": 7}


@pytest.fixture(autouse=True)
def _short_t5(monkeypatch):
    monkeypatch.setattr(dit, "T5_MIN_LENGTH", 16)  # Forge's 256 costs seconds per prompt here; one test keeps it


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    flux_pipe().save_pretrained(root / "flux")
    sd3_pipe().save_pretrained(root / "sd3")
    loras = root / "loras"
    te, model = {"te1": clip()}, flux_transformer(in_channels=64)
    write_lora(random_dit_lora("flux1", True, seed=1, te=te, model=model), loras / "styleK.safetensors", to="kohya")
    write_lora(random_dit_lora("flux1", False, seed=2, model=model), loras / "sub" / "styleP.safetensors", to="peft")
    write_lora(random_dit_lora("flux1", True, seed=3, model=model), loras / "styleC.safetensors", to="comfy")
    return root


@pytest.fixture(scope="module")
def flux(dirs):
    return load_pipeline(dirs / "flux")[0]


def _px(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_family_from_the_directory_and_mismatch_refused(dirs, flux):
    assert type(flux).__name__ == "FluxPipeline" and load_pipeline(dirs / "sd3")[1] == "sd3"
    with pytest.raises(ValueError, match="is a flux1 model but family='sdxl'"):
        load_pipeline(dirs / "flux", family="sdxl")


def test_tags_in_every_format_and_forge_infotext(dirs, flux):
    base = generate_images(flux, "a photo of cat", **KW)[0]
    again = generate_images(flux, "a photo of cat <lora:styleK:0>", lora_dir=dirs / "loras", **KW)[0]
    assert (_px(base) == _px(again)).all()  # strength 0 is the base image, bit for bit
    images = [generate_images(flux, f"a photo of cat <lora:{n}:0.9>", lora_dir=dirs / "loras", **KW)[0]
              for n in ("styleK", "styleP", "styleC")]
    assert all(np.abs(_px(im) - _px(base)).max() > 0 for im in images)
    info = parse_infotext(images[0].info["parameters"])
    assert info["Sampler"] == "Euler" and info["Schedule type"] == "Simple" and info["CFG scale"] == "1.0"
    assert info["Distilled CFG Scale"] == "3.5" and info["Lora hashes"].startswith("styleK: ")
    text = images[0].info["parameters"].splitlines()[-1]
    assert text.index("CFG scale: 1.0, Distilled CFG Scale: 3.5, Seed: 7") > 0  # Forge's order


def test_a_tag_equals_the_same_lora_merged_by_the_formula(dirs, flux):
    from lorakit.formats.sd_io import read_lora

    tagged = generate_images(flux, "a photo of cat <lora:styleK:1>", lora_dir=dirs / "loras", **KW)[0]
    LoraStack.of(flux).activate([])
    merged = copy.copy(flux)
    parts = reference({"transformer": flux.transformer, "text_encoder": flux.text_encoder},
                      read_lora(dirs / "loras" / "styleK.safetensors"), "flux1")
    merged.transformer, merged.text_encoder = parts["transformer"], parts["text_encoder"]
    merged._lorakit_loras = None
    expected = generate_images(merged, "a photo of cat", **KW)[0]
    assert np.abs(_px(tagged) - _px(expected)).max() <= 1


def test_guidance_true_cfg_and_shift(flux):
    base = generate_images(flux, "a cat", **KW)[0]
    assert np.abs(_px(generate_images(flux, "a cat", guidance=6.0, **KW)[0]) - _px(base)).max() > 0
    neg = generate_images(flux, "a cat", "red", **KW)[0]
    assert (_px(neg) == _px(base)).all()  # CFG scale 1 (Forge's default): the negative prompt is not used
    cfg = generate_images(flux, "a cat", "red", cfg_scale=3, shift=6.0, schedule="Karras", **KW)[0]
    assert np.abs(_px(cfg) - _px(base)).max() > 0
    assert flux.scheduler.config.shift == 6.0 and not flux.scheduler.config.use_dynamic_shifting
    info = parse_infotext(cfg.info["parameters"])
    assert info["Shift"] == "6.0" and info["Schedule type"] == "Karras" and info["CFG scale"] == "3.0"
    with pytest.raises(ValueError, match="not a flow-matching sampler; FLUX.1/SD3 take Euler, Heun"):
        generate_images(flux, "a cat", sampler="DPM++ 2M", **KW)


def test_sd3_cfg_with_negative_and_no_distilled_guidance(dirs):
    pipe = load_pipeline(dirs / "sd3")[0]
    images = [generate_images(pipe, "a cat", n, **KW)[0] for n in ("red", "blue")]
    assert np.abs(_px(images[0]) - _px(images[1])).max() > 0
    info = parse_infotext(images[0].info["parameters"])
    assert info["CFG scale"] == "7.0" and "Distilled CFG Scale" not in info
    with pytest.raises(ValueError, match="distilled guidance is FLUX.1-dev's; sd3 uses --cfg"):
        generate_images(pipe, "a cat", guidance=3.5, **KW)


def test_t5_emphasis_and_break_as_forge_weights_them(flux, monkeypatch):
    monkeypatch.setattr(dit, "T5_MIN_LENGTH", 256)
    cond, _ = dit.encode_pair(flux, "flux1", "a (cat:1.5) BREAK red", "")
    tok, enc = flux.tokenizer_2, flux.text_encoder_2
    expected = []
    for pieces in ([("a ", 1.0), ("cat", 1.5)], [("red", 1.0)]):
        ids, weights = [], []
        for text, w in pieces:
            piece = tok(text, add_special_tokens=False)["input_ids"]
            ids, weights = ids + piece, weights + [w] * len(piece)
        ids, weights = ids + [1] + [0] * (255 - len(ids)), weights + [1.0] * (256 - len(weights))
        with torch.no_grad():
            z = enc(torch.tensor([ids])).last_hidden_state
        zw = z * torch.tensor(weights)[None, :, None]
        expected.append(zw * (z.mean() / zw.mean()))  # A1111's "Original" emphasis: the chunk mean is kept
    torch.testing.assert_close(cond.embeds, torch.cat(expected, 1), rtol=1e-5, atol=1e-6)


def test_single_transformer_file_plus_config(dirs, tmp_path):
    from safetensors.torch import save_file

    pipe = load_pipeline(dirs / "flux")[0]
    save_file({k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}, tmp_path / "flux1-tiny.safetensors")
    single, family = load_pipeline(tmp_path / "flux1-tiny.safetensors", config=dirs / "flux")
    assert family == "flux1"
    a, b = (generate_images(p, "a cat", **KW)[0] for p in (pipe, single))
    assert (_px(a) == _px(b)).all()


def test_cli_generate_and_grid(dirs, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["sd", "generate", str(dirs / "flux"), "a cat <lora:styleP:0.7>", "--lora-dir",
                              str(dirs / "loras"), "--size", "32x32", "--steps", "1", "--seed", "3",
                              "--guidance", "2.5", "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    from PIL import Image

    (png,) = (tmp_path / "out").glob("*.png")
    assert "Distilled CFG Scale: 2.5" in Image.open(png).info["parameters"]
    res = runner.invoke(app, ["sd", "grid", str(dirs / "flux"), "a cat", "--x", "Distilled CFG Scale: 1,4",
                              "--size", "32x32", "--steps", "1", "--seed", "3", "-o", str(tmp_path / "g.png")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["sd", "generate", str(dirs / "sd3"), "a cat", "--guidance", "2", "--size", "32x32",
                              "-o", str(tmp_path / "bad")])
    assert res.exit_code == 1 and "uses --cfg" in res.output


@pytest.mark.parametrize("family", ["flux1", "sd3"])
def test_plain_prompts_condition_as_diffusers_encodes_them(dirs, family, monkeypatch):
    """Without emphasis or BREAK, lorakit's CLIP/T5 conditioning is diffusers' own encode_prompt (T5 at 256)."""
    monkeypatch.setattr(dit, "T5_MIN_LENGTH", 256)
    pipe = load_pipeline(dirs / ("flux" if family == "flux1" else "sd3"))[0]
    cond, uncond = dit.encode_pair(pipe, family, "a photo of cat", "blue sky")
    with torch.no_grad():
        if family == "flux1":
            embeds, pooled, _ = pipe.encode_prompt("a photo of cat", "a photo of cat", max_sequence_length=256)
            neg = pipe.encode_prompt("blue sky", "blue sky", max_sequence_length=256)[:2]
        else:
            embeds, neg_e, pooled, neg_p = pipe.encode_prompt(*["a photo of cat"] * 3, negative_prompt="blue sky",
                                                              negative_prompt_2="blue sky", negative_prompt_3="blue sky")
            neg = (neg_e, neg_p)
    for ours, theirs in ((cond.embeds, embeds), (cond.pooled, pooled), (uncond.embeds, neg[0]), (uncond.pooled, neg[1])):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
