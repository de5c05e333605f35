"""Applying kohya files to diffusers models: same outputs as diffusers' own loader, strengths, stacking."""

import copy
from types import SimpleNamespace

import pytest
import torch
from sd_models import random_lora, te_out, unet_out

import lorakit
from lorakit import sd
from lorakit.formats import kohya

pytest.importorskip("diffusers")
pytest.importorskip("peft")


def _outputs(parts):
    return {k: unet_out(v) if k == "unet" else te_out(v) for k, v in parts.items()}


def _diffusers_load(parts, path, sdxl):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    if sdxl:
        state, alphas = StableDiffusionXLLoraLoaderMixin.lora_state_dict(path, unet_config=parts["unet"].config)
        loader = StableDiffusionXLLoraLoaderMixin
    else:
        state, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(path)
        loader = StableDiffusionLoraLoaderMixin
    loader.load_lora_into_unet(state, alphas, parts["unet"])
    for part in ("text_encoder", "text_encoder_2"):
        if part in parts:
            loader.load_lora_into_text_encoder(state, alphas, parts[part], prefix=part)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_matches_diffusers_loader(family, sd1, sdxl, tmp_path):
    """kohya file (LoCon convs included; SAI names for SDXL) -> same U-Net and text-encoder outputs as diffusers."""
    parts = sd1 if family == "sd1" else sdxl
    path = tmp_path / "lora.safetensors"
    kohya.write_kohya(random_lora(parts, conv=True), path)
    base = _outputs(parts)
    ours = {k: copy.deepcopy(v) for k, v in parts.items()}
    theirs = {k: copy.deepcopy(v) for k, v in parts.items()}
    sd.load_lora(ours, path)
    _diffusers_load(theirs, str(path), family == "sdxl")
    got, want = _outputs(ours), _outputs(theirs)
    for part in parts:
        assert (want[part] - base[part]).abs().max() > 1e-2, f"the LoRA does not change {part}"
        torch.testing.assert_close(got[part], want[part], rtol=1e-5, atol=1e-5)


def _reference_merge(parts, files, strengths):
    """Independent oracle: W + Σ s_i·(alpha_i/r_i)·up_i·down_i, module by module."""
    out = {k: copy.deepcopy(v) for k, v in parts.items()}
    with torch.no_grad():
        for lf, s in zip(files, strengths, strict=True):
            for key, m in lf.modules.items():
                part, path = key.split(".", 1)
                w = out[part].get_submodule(path.removeprefix("text_model.")).weight
                up, down = m["lora_up.weight"], m["lora_down.weight"]
                delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape) * float(m["alpha"]) / down.shape[0]
                w += s[part] * delta
    return out


def test_strengths_stack_like_comfyui(sd1, tmp_path):
    files = [random_lora(sd1, seed=1, conv=True), random_lora(sd1, seed=2, rank=2, alpha=1.0)]
    strengths = [{"unet": 0.7, "text_encoder": 0.3}, {"unet": -1.0, "text_encoder": 2.0}]
    want = _outputs(_reference_merge(sd1, files, strengths))
    for mode in ("adapter", "merge"):
        ours = {k: copy.deepcopy(v) for k, v in sd1.items()}
        sd.load_lora(ours, files, unet_strength=[0.7, -1.0], te_strength=[0.3, 2.0], mode=mode)
        got = _outputs(ours)
        for part in got:
            torch.testing.assert_close(got[part], want[part], rtol=1e-4, atol=1e-5)


def test_adapters_switch_merge_and_unmerge(sd1):
    ours = {k: copy.deepcopy(v) for k, v in sd1.items()}
    base = unet_out(ours["unet"])
    names = sd.load_lora(ours, [random_lora(sd1, seed=3)], names=["style"], unet_strength=0.5)
    unet = ours["unet"]
    live = unet_out(unet)
    assert lorakit.active_adapters(unet) == {"style": 0.5}
    lorakit.set_active_adapters(unet, {})
    torch.testing.assert_close(unet_out(unet), base)
    lorakit.set_active_adapters(unet, {names[0]: 0.5})
    lorakit.merge(unet)
    torch.testing.assert_close(unet_out(unet), live, rtol=1e-5, atol=1e-5)
    lorakit.unmerge(unet)
    torch.testing.assert_close(unet_out(unet), live, rtol=1e-5, atol=1e-5)
    with lorakit.disable_adapters(unet):
        torch.testing.assert_close(unet_out(unet), base, rtol=1e-5, atol=1e-5)
    sd.unload_lora(ours, "style")
    torch.testing.assert_close(unet_out(unet), base)
    assert not list(lorakit.lora_layers(unet)) and not list(lorakit.lora_layers(ours["text_encoder"]))


def test_sd15_file_on_sdxl_is_refused(sd1, sdxl):
    lf = random_lora(sd1)
    lf.metadata["ss_base_model_version"] = "sd_v1"
    target = {k: copy.deepcopy(v) for k, v in sdxl.items()}
    with pytest.raises(ValueError, match="is a LoRA for SD1 but the model is SDXL"):
        sd.load_lora(target, lf)
    assert not list(lorakit.lora_layers(target["unet"]))


def test_modules_that_do_not_fit_are_listed_and_nothing_changes(sd1):
    lf = random_lora(sd1)
    lf.modules["unet.down_blocks.0.attentions.0.no_such"] = dict(lf.modules["unet.down_blocks.0.attentions.0.proj_in"])
    target = {k: copy.deepcopy(v) for k, v in sd1.items()}
    with pytest.raises(ValueError, match=r"unet.down_blocks.0.attentions.0.no_such: no such module"):
        sd.load_lora(target, lf)
    assert not list(lorakit.lora_layers(target["unet"]))
    del lf.modules["unet.down_blocks.0.attentions.0.no_such"]
    with pytest.raises(ValueError, match="the model has no text_encoder"):
        sd.load_lora({"unet": target["unet"]}, lf)
    pipe = SimpleNamespace(unet=target["unet"], text_encoder=None)  # a pipeline: parts are attributes
    sd.load_lora(pipe, lf, te_strength=0.0, mode="merge")  # like ComfyUI's LoraLoaderModelOnly


def test_fp16_model_and_file(sd1, tmp_path):
    half = {k: copy.deepcopy(v).half() for k, v in sd1.items()}
    path = tmp_path / "half.safetensors"
    kohya.write_kohya(random_lora(sd1), path, dtype="fp16")
    sd.load_lora(half, path)
    layer = half["unet"].get_submodule("down_blocks.0.attentions.0.proj_in")
    assert layer.adapters["lora_half"].lora_A.dtype == torch.float16  # "half" would shadow Module.half
    assert unet_out(half["unet"].float()).isfinite().all()
