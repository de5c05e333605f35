"""Files a FLUX.1 / SD3 run saves: kohya (fused q/k/v at the trained rank), diffusers/PEFT and ComfyUI
keys load in diffusers (where its loader reads them) and in lorakit to the live adapters' outputs;
the metadata carries kohya's flow keys; a run can start from such a file."""

import copy
from types import SimpleNamespace

import dit_models
import pytest
import torch
from dit_tiny import components, pipe
from safetensors import safe_open

from lorakit.model import lora_layers
from lorakit.tasks.diffusion.config import from_dict
from lorakit.tasks.diffusion.dit import DIT_FAMILIES
from lorakit.tasks.diffusion.dit_export import load_dit_weights, save_dit_network
from lorakit.tasks.diffusion.dit_network import add_dit_network


def _trained(family: str, **network):
    """Components with a network whose B factors are random (as after training), and a clean copy."""
    comps = components(family)
    clean = {k: copy.deepcopy(v) for k, v in comps.items() if hasattr(v, "parameters")}
    cfg = from_dict({"task": "diffusion", "model": {"path": "m", "family": family}, "data": {"train_data_dir": "d"},
                     "network": {"dim": 4, "alpha": 2, **network}, "train": {"save_precision": "fp32"}},
                    check_paths=False)
    fam = DIT_FAMILIES[family]
    lrs = {"transformer": 1.0, **{p: 1.0 for p in fam.text_parts(cfg.network.train_t5xxl)}}
    add_dit_network(comps, fam, cfg.network, lrs)
    g = torch.Generator().manual_seed(1)
    for part in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"):
        for _, layer in lora_layers(comps.get(part, torch.nn.Module())):
            with torch.no_grad():
                for name, p in layer.adapters["default"].named_parameters():
                    if name != "magnitude":  # every factor (B starts at 0), shared ones too
                        p.normal_(0, 0.2, generator=g)
    return comps, clean, cfg, fam


def _outputs(family, parts) -> dict[str, torch.Tensor]:
    """The transformer's and the CLIP encoders' outputs on fixed inputs."""
    tr = parts["transformer"]
    inputs = (dit_models.flux_inputs if family == "flux1" else dit_models.sd3_inputs)(tr, hw=4, seq=5)
    inputs["pooled_projections"] = torch.randn(2, tr.config.pooled_projection_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = {"transformer": dit_models.run(tr, inputs)}
        ids = torch.tensor([[5, 9, 12, 7, 3, 3]])
        for name in ("text_encoder", "text_encoder_2"):
            te = parts.get(name)
            if te is not None and type(te).__name__.startswith("CLIP"):
                out[name] = te(ids).last_hidden_state
    return out


@pytest.mark.parametrize(("family", "to"), [("flux1", "kohya"), ("flux1", "peft"), ("flux1", "comfy"),
                                            ("sd3", "peft"), ("sd3", "kohya")])
def test_saved_file_loads_in_diffusers_and_lorakit_to_the_live_outputs(tmp_path, family, to):
    from lorakit.sd import load_lora

    comps, clean, cfg, fam = _trained(family)
    cfg.train.save_format = to
    path = save_dit_network(tmp_path / "x.safetensors", comps, cfg, fam, "raw", {"ss_num_train_images": "3"})
    want = _outputs(family, comps)
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    prefix = {"kohya": "lora_unet_", "peft": "transformer.", "comfy": "diffusion_model."}[to]
    assert any(k.startswith(prefix) for k in keys)
    if to == "kohya":  # kohya's fused layout at the trained rank (the q/k/v parts share one down)
        qkv = "double_blocks_0_img_attn_qkv" if family == "flux1" else "joint_blocks_0_x_block_attn_qkv"
        down = next(k for k in keys if qkv in k and k.endswith("lora_down.weight"))
        with safe_open(str(path), "pt") as f:
            assert f.get_tensor(down).shape[0] == 4
    # diffusers reads kohya/ComfyUI FLUX.1 files only at FLUX.1's real widths (its converter hard-codes the single
    # blocks' 3072/12288 split) and has no SD3 kohya converter: here it reads the diffusers/PEFT files
    loaders = ["lorakit"] + (["diffusers"] if to == "peft" else [])
    for loader in loaders:
        base = pipe(family)
        for name, module in clean.items():
            setattr(base, name, copy.deepcopy(module))
        if loader == "diffusers":
            base.load_lora_weights(str(path))
        else:
            load_lora(base, str(path))
        got = _outputs(family, {k: getattr(base, k) for k in want})
        for name, w in want.items():
            torch.testing.assert_close(got[name], w, rtol=1e-5, atol=1e-5, msg=lambda m, n=name, ld=loader: f"{ld} {n}: {m}")
            assert not torch.allclose(w, _outputs(family, clean)[name], atol=1e-4)  # the LoRA does change it
    assert meta["ss_model_prediction_type"] == "raw" and meta["ss_timestep_sampling"] == "sigma"
    assert meta["ss_guidance_scale"] == "1.0" and meta["ss_discrete_flow_shift"] == "3.0"
    assert meta["ss_weighting_scheme"] == "none" and meta["ss_apply_t5_attn_mask"] == "False"
    for key in ("ss_logit_mean", "ss_logit_std", "ss_mode_scale", "ss_sigmoid_scale"):
        assert key in meta
    assert meta["modelspec.architecture"] == ("flux-1-dev/lora" if family == "flux1" else
                                              "stable-diffusion-3-5-medium/lora")
    assert meta.get("ss_model_type") == ("flux" if family == "flux1" else None)
    assert meta["ss_base_model_version"] == family and meta["ss_num_train_images"] == "3"
    assert "ss_min_snr_gamma" not in meta and "ss_clip_skip" not in meta


def test_a_run_continues_from_a_saved_file_and_refuses_separate_downs(tmp_path):
    comps, clean, cfg, fam = _trained("flux1")
    path = save_dit_network(tmp_path / "a.safetensors", comps, cfg, fam, "raw", {})
    want = _outputs("flux1", comps)
    fresh = {**components("flux1"), **{k: copy.deepcopy(v) for k, v in clean.items()}}
    add_dit_network(fresh, fam, cfg.network, {"transformer": 1.0, "text_encoder": 1.0})
    assert load_dit_weights(fresh, fam, str(path)) > 10
    got = _outputs("flux1", fresh)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
    split = _trained("flux1", split_qkv=True)
    with torch.no_grad():  # separate downs per q/k/v: a block-diagonal fused file
        for _, layer in lora_layers(split[0]["transformer"]):
            layer.adapters["default"].lora_A.normal_(generator=torch.Generator().manual_seed(len(_)))
    split[2].train.save_format = "peft"  # diffusers' split layout keeps the separate downs (kohya's would fuse them
    path2 = save_dit_network(tmp_path / "b.safetensors", split[0], split[2], fam, "raw", {})  # block-diagonally)
    with pytest.raises(ValueError, match="different down factors.*split_qkv: true"):
        load_dit_weights(fresh, fam, str(path2))


@pytest.mark.parametrize(("family", "module", "to"), [("flux1", "dora", "kohya"), ("sd3", "loha", "comfy"),
                                                      ("sd3", "lokr", "kohya")])
def test_lycoris_modules_share_their_input_factors_and_save_in_the_fused_layout(tmp_path, family, module, to):
    """DoRA (shared down, per-row magnitude), LoHa (shared hada_w*_b), LoKr (shared W2): the parts of a fused
    Linear stack into one original-layout module, exactly."""
    from lorakit.sd import load_lora

    comps, clean, cfg, fam = _trained(family, module=module)
    cfg.train.save_format = to
    path = save_dit_network(tmp_path / "x.safetensors", comps, cfg, fam, "raw", {})
    want = _outputs(family, comps)
    base = pipe(family)
    for name, m in clean.items():
        setattr(base, name, copy.deepcopy(m))
    load_lora(base, str(path))
    got = _outputs(family, {k: getattr(base, k) for k in want})
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("module", "to", "why"), [("loha", "peft", "not LoRA/DoRA"),
                                                   ("lokr", "kohya", "do not share their column factors")])
def test_networks_a_format_cannot_hold_are_refused_before_training(module, to, why):
    from lorakit.tasks.diffusion.dit_export import check_savable

    comps, _, cfg, fam = _trained("flux1", module=module)
    cfg.train.save_format = to
    with pytest.raises(ValueError, match=f"network.module='{module}' cannot be saved as train.save_format='{to}' "
                                         f"for flux1: .*{why}"):
        check_savable(comps, fam, cfg)


def test_metadata_names_schnell_and_sd3_variants():
    from lorakit.tasks.diffusion.dit_export import architecture

    flux, sd3 = SimpleNamespace(name="flux1"), SimpleNamespace(name="sd3")
    assert architecture(flux, {"guidance_embeds": False}) == "flux-1-schnell/lora"
    assert architecture(sd3, {"qk_norm": None}) == "stable-diffusion-3-medium/lora"
    assert architecture(sd3, {"qk_norm": "rms_norm", "dual_attention_layers": ()}) == "stable-diffusion-3-5-large/lora"
