"""generate_images on a whole tiny pipeline: seeds, LoRA tags stacked with te/unet strengths (checked against
W = W0 + Σ mult·(alpha/r)·up@down, in latent space), strength 0 = base bit for bit, the native size, LoRA names
that may not leave the LoRA directories, and refusals of bad values."""

import copy
import re

import numpy as np
import pytest
import torch
from sd_models import random_lora, unet_out
from sd_pipes import clean_parts

from lorakit.formats.sd_io import write_lora
from lorakit.layer import LoraLayer
from lorakit.sd.encode import encode_prompt
from lorakit.sd.generate import generate_images
from lorakit.sd.infotext import lora_hash, parse_infotext
from lorakit.sd.loras import LoraIndex, extract_tags
from lorakit.sd.prompt import PromptSyntaxError

KW = {"width": 32, "height": 32, "steps": 2, "cfg_scale": 6.0, "seed": 11}


def _px(im):
    return np.asarray(im).astype(int)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    parts = clean_parts("sd1")
    write_lora(random_lora(parts, seed=1), d / "styleA.safetensors")
    (d / "sub").mkdir()
    lf = random_lora(parts, seed=2, rank=2, alpha=1.0)
    lf.metadata["ss_output_name"] = "charB"
    write_lora(lf, d / "sub" / "char_b-000004.safetensors")
    write_lora(random_lora(clean_parts("sdxl"), seed=3), d / "xlOnly.safetensors")
    return d


def test_deterministic_by_seed_and_batch_seeds(sd1_pipe):
    a = generate_images(sd1_pipe, "a red cat", "dog", count=2, **KW)
    b = generate_images(sd1_pipe, "a red cat", "dog", **{**KW, "seed": KW["seed"] + 1})
    assert (_px(a[1]) == _px(b[0])).all()
    assert (_px(generate_images(sd1_pipe, "a red cat", "dog", **KW)[0]) == _px(a[0])).all()
    assert not (_px(a[0]) == _px(a[1])).all()
    assert parse_infotext(a[1].info["parameters"])["Seed"] == str(KW["seed"] + 1)


def test_strength_zero_is_the_base_image_bit_for_bit(sd1_pipe, lora_dir):
    base = generate_images(sd1_pipe, "a red cat", **KW)[0]
    with_tag = generate_images(sd1_pipe, "a red cat <lora:styleA:0>", lora_dir=lora_dir, **KW)[0]
    assert (_px(base) == _px(with_tag)).all()
    styled = generate_images(sd1_pipe, "a red cat <lora:styleA:1>", lora_dir=lora_dir, **KW)[0]
    assert not (_px(base) == _px(styled)).all()
    again = generate_images(sd1_pipe, "a red cat", lora_dir=lora_dir, **KW)[0]  # tags gone -> adapters off
    assert (_px(base) == _px(again)).all()


def _formula_pipe(pipe, files_and_mults):
    """A copy of the base pipeline with W = W0 + Σ mult·(alpha/r)·up@down written into the weights."""
    from lorakit.formats.sd_io import read_lora
    from lorakit.formats.sd_keys import layout_from_config

    ref = copy.deepcopy(pipe)
    for part in ("unet", "text_encoder"):  # drop the live adapters: the copy is the base model
        model = getattr(ref, part)
        for name, mod in list(model.named_modules()):
            if isinstance(mod, LoraLayer):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, mod.base_layer)
    layout = layout_from_config(pipe.unet.config)
    with torch.no_grad():
        for path, te, unet in files_and_mults:
            for key, t in read_lora(path, layout).modules.items():
                part, mpath = key.split(".", 1)
                model = getattr(ref, part)
                try:
                    w = model.get_submodule(mpath).weight
                except AttributeError:
                    w = model.get_submodule(mpath.replace("text_model.", "")).weight
                down, up = t["lora_down.weight"].flatten(1).float(), t["lora_up.weight"].flatten(1).float()
                mult = unet if part == "unet" else te
                w += (mult * float(t["alpha"]) / down.shape[0] * (up @ down)).reshape(w.shape)
    return ref


def test_two_loras_with_te_unet_strengths_equal_the_weight_formula(sd1_pipe, lora_dir):
    files = [lora_dir / "styleA.safetensors", lora_dir / "sub" / "char_b-000004.safetensors"]
    prompt = "a red cat <lora:styleA:0.5:0.8> <lora:charB:te=0.3:unet=1.2>"
    got = generate_images(sd1_pipe, prompt, "dog", lora_dir=lora_dir, **KW)[0]  # leaves these adapters active
    ref = _formula_pipe(sd1_pipe, [(files[0], 0.5, 0.8), (files[1], 0.3, 1.2)])
    torch.testing.assert_close(encode_prompt(sd1_pipe, "a red cat").embeds, encode_prompt(ref, "a red cat").embeds)
    torch.testing.assert_close(unet_out(sd1_pipe.unet), unet_out(ref.unet), rtol=1e-4, atol=1e-4)
    info = parse_infotext(got.info["parameters"])
    assert info["Lora hashes"] == f"styleA: {lora_hash(files[0])}, charB: {lora_hash(files[1])}"
    got = generate_images(sd1_pipe, prompt, "dog", lora_dir=lora_dir, output_type="latent", **KW)[0]
    want = generate_images(ref, "a red cat", "dog", output_type="latent", **KW)[0]
    base = generate_images(sd1_pipe, "a red cat", "dog", output_type="latent", **KW)[0]
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)  # latents are of order 10
    assert (got - base).abs().max() > 0.1


def test_each_file_loads_once(sd1_pipe, lora_dir):
    from lorakit.sd.loras import LoraStack

    generate_images(sd1_pipe, "cat <lora:styleA:0.4>", lora_dir=lora_dir, **KW)
    before = dict(LoraStack.of(sd1_pipe).names)
    generate_images(sd1_pipe, "cat <lora:styleA:0.9>", lora_dir=lora_dir, **KW)
    assert LoraStack.of(sd1_pipe).names == before


def test_unknown_name_lists_closest(sd1_pipe, lora_dir):
    with pytest.raises(ValueError, match="unknown LoRA 'styleB'.*Closest: styleA"):
        generate_images(sd1_pipe, "cat <lora:styleB:1>", lora_dir=lora_dir, **KW)


def test_wrong_family_is_refused_before_generating(sd1_pipe, lora_dir):
    with pytest.raises(ValueError, match="LoRA for SDXL but the model is SD1"):
        generate_images(sd1_pipe, "cat <lora:xlOnly:1>", lora_dir=lora_dir, **KW)
    assert not any("xlOnly" in n for n in _adapter_names(sd1_pipe))


def _adapter_names(pipe):
    from lorakit.model import adapter_names

    return adapter_names(pipe.unet) + adapter_names(pipe.text_encoder)


def test_tag_parsing_and_errors(tmp_path):
    """A1111 removes every <name:...> tag from the encoded text, LoRA or not."""
    from lorakit.sd.loras import other_tags

    prompt = "a <lora:x> b <lyco:y:0.5> <lora:z:0.2:unet=0.7> <hypernet:h:1> c <my_net:q:2>"
    text, tags = extract_tags(prompt)
    assert text == "a  b    c "
    assert [(t.name, t.te, t.unet) for t in tags] == [("x", 1, 1), ("y", 0.5, 0.5), ("z", 0.2, 0.7)]
    assert other_tags(prompt) == ["<hypernet:h:1>", "<my_net:q:2>"]
    with pytest.raises(PromptSyntaxError) as e:
        extract_tags("a <lora:x:0.5:abc>")
    assert e.value.pos == 14
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(PromptSyntaxError, match=f"te strength '{bad}' is not a finite number"):
            extract_tags(f"a <lora:x:{bad}>")
    with pytest.raises(PromptSyntaxError, match="not closed"):
        extract_tags("a <lora:x:0.5 b")
    with pytest.raises(ValueError, match="does not exist"):
        LoraIndex(tmp_path / "nope")


def test_other_tags_are_not_encoded_and_are_warned_about(sd1_pipe):
    from lorakit.sd.encode import encode_prompt

    seen = []
    hook = sd1_pipe.text_encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0][0].tolist()))
    try:
        with pytest.warns(UserWarning, match="<hypernet:h:1>: lorakit applies only <lora:...> and <lyco:...>"):
            generate_images(sd1_pipe, "a red cat<hypernet:h:1>", "", **KW)
        encode_prompt(sd1_pipe, "a red cat")
    finally:
        hook.remove()
    assert seen[0] == seen[-1]  # the text encoder saw "a red cat"


def test_alias_duplicates_resolve_by_file_name_only(lora_dir, tmp_path):
    import shutil

    assert LoraIndex(lora_dir).resolve("charB").name == "char_b-000004.safetensors"
    shutil.copytree(lora_dir, tmp_path / "d")
    shutil.copy(lora_dir / "sub" / "char_b-000004.safetensors", tmp_path / "d" / "char_b-000008.safetensors")
    idx = LoraIndex(tmp_path / "d")
    assert idx.resolve("char_b-000008").name == "char_b-000008.safetensors"
    with pytest.raises(ValueError, match="unknown LoRA 'charB'"):
        idx.resolve("charB")


def test_sdxl_generates_with_a_lora(sdxl_pipe, tmp_path):
    write_lora(random_lora(clean_parts("sdxl"), seed=4), tmp_path / "xl.safetensors")
    kw = {**KW, "sampler": "DPM++ 2M", "schedule": "Karras"}
    base = generate_images(sdxl_pipe, "a red cat", **kw)[0]
    styled = generate_images(sdxl_pipe, "a red cat <lora:xl:0.7>", lora_dir=tmp_path, **kw)[0]
    assert base.size == (32, 32) and not (_px(base) == _px(styled)).all()
    zero = generate_images(sdxl_pipe, "a red cat <lora:xl:0>", lora_dir=tmp_path, **kw)[0]
    assert (_px(base) == _px(zero)).all()


def test_samples_in_eval_mode_and_restores_training(sd1_pipe):
    sd1_pipe.unet.train()
    sd1_pipe.text_encoder.train()
    seen = []
    hook = sd1_pipe.unet.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    try:
        generate_images(sd1_pipe, "a cat", **{**KW, "steps": 1})
    finally:
        hook.remove()
    assert seen and not any(seen)
    assert sd1_pipe.unet.training and sd1_pipe.text_encoder.training
    sd1_pipe.unet.eval()
    sd1_pipe.text_encoder.eval()


def test_prompts_name_files_only_inside_the_lora_directories(lora_dir, tmp_path):
    """Before: a tag fell back to Path(name).is_file(), so a prompt could load any file on the disk."""
    import shutil

    outside = tmp_path / "secret"
    outside.mkdir()
    shutil.copy(lora_dir / "styleA.safetensors", outside / "x.safetensors")
    root = tmp_path / "loras"
    shutil.copytree(lora_dir, root)
    (root / "sub" / "link.safetensors").symlink_to(outside / "x.safetensors")
    idx = LoraIndex(root)
    assert idx.resolve("sub/char_b-000004") == root / "sub" / "char_b-000004.safetensors"  # a path inside
    refusals = {"../secret/x": "outside the LoRA directory", "sub/../../secret/x": "outside the LoRA directory",
                str(outside / "x.safetensors"): "absolute path", str(outside / "x"): "absolute path",
                "link": "symlink to .*outside the LoRA directories", "sub/link": "outside the LoRA directory"}
    for name, why in refusals.items():
        with pytest.raises(ValueError, match=why) as e:
            idx.resolve(name)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no LoRA directory was given"):
        LoraIndex().resolve("styleA")
    with pytest.raises(ValueError, match="absolute path"):
        LoraIndex().resolve(str(lora_dir / "styleA.safetensors"))
    two = LoraIndex([outside, root])  # every configured directory is searched
    assert two.resolve("x") == outside / "x.safetensors" and two.resolve("styleA") == root / "styleA.safetensors"


def test_lora_with_nan_factors_is_refused_naming_file_and_key(sd1_pipe, tmp_path):
    from lorakit.formats.sd_io import read_lora

    lf = random_lora(clean_parts("sd1"), seed=7)
    key = sorted(lf.modules)[3]
    lf.modules[key]["lora_up.weight"][0, 0] = float("nan")
    write_lora(lf, tmp_path / "broken.safetensors")
    read_lora(tmp_path / "broken.safetensors")  # readable: inspect can still show it
    with pytest.raises(ValueError, match=rf"broken.safetensors.*{key}.lora_up.weight: found NaN/Inf values") as e:
        generate_images(sd1_pipe, "cat <lora:broken:1>", lora_dir=tmp_path, **KW)
    assert "applying" in str(e.value)
    assert not any("broken" in n for n in _adapter_names(sd1_pipe))


def test_lora_for_a_bigger_model_names_file_module_and_shapes(sd1_pipe, tmp_path):
    """A real SD1.5 LoRA on a smaller SD1-shaped model: same module names, other shapes."""
    from diffusers import UNet2DConditionModel

    big = UNet2DConditionModel(**{**dict(sd1_pipe.unet.config), "block_out_channels": (16, 32)})
    write_lora(random_lora({"unet": big}, seed=3), tmp_path / "big.safetensors")
    with pytest.raises(ValueError) as e:
        generate_images(sd1_pipe, "cat <lora:big:1>", lora_dir=tmp_path, **KW)
    msg = str(e.value)
    assert "big.safetensors: " in msg and "module(s) do not fit this model; nothing was changed" in msg
    assert re.search(r"unet.down_blocks.0.attentions.0.proj_in: factors down \(4, 16(, 1, 1)?\) / up \(16, 4(, 1, 1)?\) "
                     r"do not fit the model weight \(8, 8(, 1, 1)?\)", msg)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"cfg_scale": float("nan")}, "cfg_scale=nan: the CFG scale must be a finite number"),
    ({"cfg_scale": float("inf")}, "cfg_scale=inf"),
    ({"clip_skip": 10}, "clip_skip=10: this model's text encoder allows Clip skip 1 \\(last layer\\) to 3"),
    ({"clip_skip": 0}, "clip_skip=0"),
    ({"loras": [("styleA", float("nan"))]}, "must be finite numbers"),
])
def test_bad_values_are_refused_before_generating(sd1_pipe, lora_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_images(sd1_pipe, "cat", lora_dir=lora_dir, **{**KW, **kwargs})


def test_size_defaults_to_the_models_native_size(sd1_pipe, sdxl_pipe):
    from types import SimpleNamespace

    from lorakit.sd.generate import native_size

    kw = {k: v for k, v in KW.items() if k not in ("width", "height")}
    assert generate_images(sd1_pipe, "cat", **kw)[0].size == (32, 32)  # U-Net sample size 8 x VAE factor 4
    assert native_size(sdxl_pipe) == (32, 32)
    sdxl = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(sample_size=128)), vae_scale_factor=8)
    sd15 = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(sample_size=64)), vae_scale_factor=8)
    assert native_size(sdxl) == (1024, 1024) and native_size(sd15) == (512, 512)
