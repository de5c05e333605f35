"""generate_images on a whole tiny pipeline: seeds, LoRA tags stacked with te/unet strengths (checked against
W = W0 + Σ mult·(alpha/r)·up@down), strength 0 = base bit for bit, resolution and refusal errors."""

import copy

import numpy as np
import pytest
import torch
from sd_models import random_lora, sdxl_parts, unet_out

from lorakit.formats.sd_io import write_lora
from lorakit.layer import LoraLayer
from lorakit.sd.encode import encode_prompt
from lorakit.sd.generate import generate_images
from lorakit.sd.infotext import lora_hash, parse_infotext
from lorakit.sd.loras import LoraIndex, extract_tags
from lorakit.sd.prompt import PromptSyntaxError

KW = {"width": 32, "height": 32, "steps": 3, "cfg_scale": 6.0, "seed": 11}


def _px(im):
    return np.asarray(im).astype(int)


@pytest.fixture(scope="module")
def lora_dir(sd1_pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    parts = {"unet": sd1_pipe.unet, "text_encoder": sd1_pipe.text_encoder}
    write_lora(random_lora(parts, seed=1), d / "styleA.safetensors")
    (d / "sub").mkdir()
    lf = random_lora(parts, seed=2, rank=2, alpha=1.0)
    lf.metadata["ss_output_name"] = "charB"
    write_lora(lf, d / "sub" / "char_b-000004.safetensors")
    write_lora(random_lora(sdxl_parts(), seed=3), d / "xlOnly.safetensors")
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
    small = "a red cat <lora:styleA:0.05:0.1> <lora:charB:te=0.1:unet=0.05>"
    got = generate_images(sd1_pipe, small, "dog", lora_dir=lora_dir, **KW)[0]
    want = generate_images(_formula_pipe(sd1_pipe, [(files[0], 0.05, 0.1), (files[1], 0.1, 0.05)]),
                           "a red cat", "dog", **KW)[0]
    base = generate_images(sd1_pipe, "a red cat", "dog", **KW)[0]
    assert np.abs(_px(got) - _px(want)).max() <= 1 < np.abs(_px(got) - _px(base)).max()


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
    text, tags = extract_tags("a <lora:x> b <lyco:y:0.5> <lora:z:0.2:unet=0.7> <hypernet:h:1>")
    assert text == "a  b   <hypernet:h:1>"
    assert [(t.name, t.te, t.unet) for t in tags] == [("x", 1, 1), ("y", 0.5, 0.5), ("z", 0.2, 0.7)]
    with pytest.raises(PromptSyntaxError) as e:
        extract_tags("a <lora:x:0.5:abc>")
    assert e.value.pos == 14
    with pytest.raises(PromptSyntaxError, match="not closed"):
        extract_tags("a <lora:x:0.5 b")
    with pytest.raises(ValueError, match="does not exist"):
        LoraIndex(tmp_path / "nope")


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
    parts = {"unet": sdxl_pipe.unet, "text_encoder": sdxl_pipe.text_encoder, "text_encoder_2": sdxl_pipe.text_encoder_2}
    write_lora(random_lora(parts, seed=4), tmp_path / "xl.safetensors")
    kw = {**KW, "sampler": "DPM++ 2M", "schedule": "Karras"}
    base = generate_images(sdxl_pipe, "a red cat", **kw)[0]
    styled = generate_images(sdxl_pipe, "a red cat <lora:xl:0.7>", lora_dir=tmp_path, **kw)[0]
    assert base.size == (32, 32) and not (_px(base) == _px(styled)).all()
    zero = generate_images(sdxl_pipe, "a red cat <lora:xl:0>", lora_dir=tmp_path, **kw)[0]
    assert (_px(base) == _px(zero)).all()
