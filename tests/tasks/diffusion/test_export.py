"""Saved files load where users load them and give the live training adapter's outputs: diffusers'
``load_lora_weights`` and ``lorakit.sd.load_lora`` (LoRA, LoCon, DoRA, LoHa, LoKr); every key maps
under kohya naming."""

import copy

import pytest
import sd_pipes
import torch
from sd_models import unet_out
from sd_pipes import components

from lorakit.formats.kohya import read_kohya, write_kohya
from lorakit.formats.sd_keys import layout_from_config
from lorakit.model import lora_layers
from lorakit.sd import load_lora
from lorakit.tasks.diffusion.config import NetworkArgs
from lorakit.tasks.diffusion.family import FAMILIES
from lorakit.tasks.diffusion.network import add_network, to_lorafile


def trained(tmp_path, sdxl=False, **net):
    """Components with a randomised network (as if trained) and untouched copies of the base parts."""
    comps = components(sdxl)
    family = FAMILIES["sdxl" if sdxl else "sd1"]
    base = {p: copy.deepcopy(comps[p]) for p in ("unet", *family.text_parts)}
    lrs = {"unet": 1e-4, **{p: 1e-4 for p in family.text_parts}}
    add_network(comps, NetworkArgs(**{"dim": 4, "alpha": 2, **net}), family.text_parts, lrs)
    g = torch.Generator().manual_seed(1)
    for part in base:
        for _, layer in lora_layers(comps[part]):
            for p in layer.adapters["default"].parameters():
                with torch.no_grad():
                    p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return comps, base, family


def _ids(tok):
    """Two token rows: BOS, three characters, EOS (+ padding)."""
    bos, eos = tok.bos_token_id, tok.eos_token_id
    return torch.tensor([[bos, 5, 9, 13, eos], [bos, 7, 11, eos, eos]])


def save(tmp_path, comps, family):
    path = tmp_path / "out.safetensors"
    write_kohya(to_lorafile(comps, family.name), path, dtype="fp32", family=family.lora_family)
    return path


@pytest.mark.parametrize("module,conv_dim", [("lora", 2), ("dora", None), ("loha", 2), ("lokr", None)])
def test_lorakit_load_lora_reproduces_the_live_adapter(tmp_path, module, conv_dim):
    comps, base, family = trained(tmp_path, module=module, conv_dim=conv_dim)
    path = save(tmp_path, comps, family)
    lf = read_kohya(path, layout_from_config(comps["unet"].config))  # every key maps back, or this raises
    assert len(lf.modules) == sum(1 for p in base for _ in lora_layers(comps[p]))
    load_lora(base, path)
    torch.testing.assert_close(unet_out(base["unet"]), unet_out(comps["unet"]), atol=1e-5, rtol=1e-4)
    ids = _ids(comps["tokenizer"])
    with torch.no_grad():
        torch.testing.assert_close(base["text_encoder"](ids).last_hidden_state,
                                   comps["text_encoder"](ids).last_hidden_state, atol=1e-5, rtol=1e-4)


def test_sdxl_file_uses_kohya_sai_names_and_loads_back(tmp_path):
    comps, base, family = trained(tmp_path, sdxl=True)
    path = save(tmp_path, comps, family)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_") for k in keys)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["sshs_model_hash"]
    load_lora(base, path)
    torch.testing.assert_close(unet_out(base["unet"]), unet_out(comps["unet"]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd1", "sdxl"])
def test_diffusers_load_lora_weights_reproduces_the_live_adapter(tmp_path, sdxl):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    comps, base, family = trained(tmp_path, sdxl=sdxl)
    path = save(tmp_path, comps, family)
    common = {"vae": sd_pipes.tiny_vae(), "tokenizer": comps["tokenizer"], "scheduler": sd_pipes.scheduler()}
    if sdxl:
        pipe = StableDiffusionXLPipeline(**common, tokenizer_2=comps["tokenizer_2"], **base)
    else:
        pipe = StableDiffusionPipeline(**common, **base, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    torch.testing.assert_close(unet_out(pipe.unet), unet_out(comps["unet"]), atol=1e-5, rtol=1e-4)
    ids = _ids(comps["tokenizer"])
    with torch.no_grad():
        torch.testing.assert_close(pipe.text_encoder(ids).last_hidden_state,
                                   comps["text_encoder"](ids).last_hidden_state, atol=1e-5, rtol=1e-4)


def test_network_weights_continue_a_saved_file_and_refuse_another_family(tmp_path):
    from lorakit.tasks.diffusion.network import load_network_weights
    from lorakit.tasks.diffusion.validate import lora_family_problems

    comps, base, family = trained(tmp_path)
    path = save(tmp_path, comps, family)
    fresh = {**components(sdxl=False), **{k: copy.deepcopy(v) for k, v in base.items()}}
    add_network(fresh, NetworkArgs(dim=4, alpha=1), family.text_parts, {"unet": 1e-4, "text_encoder": 1e-4})
    assert load_network_weights(fresh, str(path)) == len(read_kohya(path, layout_from_config(
        comps["unet"].config)).modules)
    torch.testing.assert_close(unet_out(fresh["unet"]), unet_out(comps["unet"]), atol=1e-5, rtol=1e-4)
    other = tmp_path / "xl.safetensors"
    write_kohya(to_lorafile(comps, "sd1"), other, family="sdxl")  # says SDXL in its metadata
    with pytest.raises(ValueError, match="LoRA for SDXL but the model is SD1"):
        load_network_weights(fresh, str(other))
    assert "LoRA for SDXL but the model is SD1" in lora_family_problems(str(other), "sd1")[0]
    assert lora_family_problems(str(path), "sd1") == []
