"""FLUX.1/SD3 LoRA files: key tables, detection, the three styles, fused <-> split exactness, errors."""

from __future__ import annotations

import json

import pytest
import torch
from dit_models import _shapes, random_dit_lora
from dit_models import delta_2d as _delta
from dit_models import split_deltas as _split_delta
from safetensors import safe_open
from safetensors.torch import save_file
from sd_models import random_lora, sd1_parts

from lorakit.formats.dit_keys import TABLES, families_of, split_entry
from lorakit.formats.dit_layout import select_rows, swap_index, to_fused, to_split
from lorakit.formats.errors import LoraFileError
from lorakit.formats.sd_io import read_lora, write_lora


@pytest.mark.parametrize("family", ["flux1", "sd3"])
def test_tables_cover_every_linear_of_the_models(family):
    for name in _shapes(family):
        entry, index, k, dotted = split_entry(family, name)
        assert dotted == name and families_of(entry.fused.replace("{i}", index or ""), fused=True) >= {family}


@pytest.mark.parametrize("family", ["flux1", "sd3"])
@pytest.mark.parametrize("algo", ["lora", "dora", "loha"])
def test_fused_to_split_is_exact_and_back_is_identical(family, algo):
    lf = random_dit_lora(family, fused=True, algo=algo, seed=1)
    split = to_split(lf)
    expected = _split_delta(lf, family)
    assert set(expected) == {k.split(".", 1)[1] for k in split.modules}
    for key, m in split.modules.items():
        assert torch.allclose(_delta(m), expected[key.split(".", 1)[1]], atol=1e-6)
        if algo == "dora":
            assert m["dora_scale"].shape[0] == m["lora_up.weight"].shape[0]
    back, notes = to_fused(split)
    assert notes == [] and set(back.modules) == set(lf.modules)
    for key, m in lf.modules.items():
        assert back.modules[key].keys() == m.keys()
        assert all(torch.equal(back.modules[key][s], t) for s, t in m.items())


def test_split_parts_with_their_own_downs_fuse_block_diagonally():
    lf = random_dit_lora("flux1", fused=False, seed=2)
    lf.modules["transformer.transformer_blocks.0.attn.to_k"]["alpha"] = torch.tensor(1.0)  # another scale
    del lf.modules["transformer.transformer_blocks.0.attn.add_v_proj"]  # a part the file lacks: zero rows
    fused, notes = to_fused(lf)
    qkv = fused.modules["transformer.double_blocks.0.img_attn.qkv"]
    assert qkv["lora_down.weight"].shape[0] == 12 and any("img_attn.qkv: rank 4+4+4 -> 12" in n for n in notes)
    parts = [lf.modules[f"transformer.transformer_blocks.0.attn.to_{c}"] for c in "qkv"]
    assert torch.allclose(_delta(qkv), torch.cat([_delta(p) for p in parts]), atol=1e-6)
    txt = fused.modules["transformer.double_blocks.0.txt_attn.qkv"]
    assert torch.equal(_delta(txt)[64:], torch.zeros(32, 32))
    linear1 = fused.modules["transformer.single_blocks.0.linear1"]
    assert linear1["lora_down.weight"].shape[0] == 16  # q, k, v and the MLP: 4 parts of rank 4
    for key, expected in _split_delta(fused, "flux1").items():  # and split back: the same updates
        if f"transformer.{key}" in lf.modules:
            assert torch.allclose(_delta(lf.modules[f"transformer.{key}"]), expected, atol=1e-6)


def test_final_adaln_rows_swap_and_sd3_swaps_only_the_two_chunk_context_adaln():
    lf = random_dit_lora("sd3", fused=True, seed=3)
    split = to_split(lf)
    fused_out = _delta(lf.modules["transformer.final_layer.adaLN_modulation.1"])
    shift, scale = fused_out.chunk(2)
    assert torch.equal(_delta(split.modules["transformer.norm_out.linear"]), torch.cat([scale, shift]))
    last, first = (_delta(split.modules[f"transformer.transformer_blocks.{i}.norm1_context.linear"]) for i in (1, 0))
    assert last.shape[0] == 64 and torch.equal(last, torch.cat(_delta(
        lf.modules["transformer.joint_blocks.1.context_block.adaLN_modulation.1"]).chunk(2)[::-1]))
    assert torch.equal(first, _delta(lf.modules["transformer.joint_blocks.0.context_block.adaLN_modulation.1"]))


def test_lokr_splits_on_its_blocks_and_refuses_rows_it_cannot_hold():
    w1, w2 = torch.randn(3, 2), torch.randn(4, 5)
    m = {"lokr_w1": w1, "lokr_w2": w2}  # ΔW (12, 10): rows in blocks of 4
    part = select_rows(m, torch.arange(4, 8), "m")
    assert torch.equal(torch.kron(part["lokr_w1"], part["lokr_w2"]), torch.kron(w1, w2)[4:8])
    swapped = select_rows({"lokr_w1": torch.randn(4, 2), "lokr_w2": w2}, swap_index(16), "m")
    assert swapped["lokr_w1"].shape == (4, 2)
    with pytest.raises(ValueError, match="blocks of 4"):
        select_rows(m, torch.arange(2, 6), "m")


@pytest.mark.parametrize("to", ["kohya", "peft", "comfy"])
@pytest.mark.parametrize("family", ["flux1", "sd3"])
def test_each_style_round_trips_and_is_detected(tmp_path, to, family):
    from dit_models import clip, t5

    te = {"te1": clip(), "te3": t5()} | ({"te2": clip(seed=2)} if family == "sd3" else {})
    lf = random_dit_lora(family, fused=True, seed=4, te=te)
    lf.metadata = {"ss_output_name": "style"}
    path = tmp_path / f"{to}.safetensors"
    assert write_lora(lf, path, to=to) == []
    back = read_lora(path)
    assert back.family() == family and back.source == to and back.naming.fused == (to != "peft")
    refused, _ = to_fused(back)
    for key, m in lf.modules.items():
        for s, t in m.items():
            assert torch.equal(refused.modules[key][s], t), (key, s)
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    prefix = {"kohya": "lora_unet_", "peft": "transformer.", "comfy": "diffusion_model."}[to]
    assert any(k.startswith(prefix) for k in keys) and meta["ss_output_name"] == "style"
    assert meta["ss_base_model_version"] == family.replace("flux1", "flux1")
    if to == "peft":  # diffusers builds a peft LoraConfig from each part's entry
        from peft import LoraConfig

        data = json.loads(meta["lora_adapter_metadata"])
        config = LoraConfig(**{k.split(".", 1)[1]: v for k, v in data.items() if k.startswith("transformer.")})
        assert config.r == 4 and config.lora_alpha == 2.0
        t5_attr = "text_encoder_2" if family == "flux1" else "text_encoder_3"
        assert any(k.startswith(f"{t5_attr}.encoder.block.0.layer.0.SelfAttention.q.") for k in keys)


def test_detection_is_unambiguous_between_sd_flux_and_sd3(tmp_path):
    write_lora(random_lora(sd1_parts(), seed=0), tmp_path / "sd1.safetensors")
    sd = read_lora(tmp_path / "sd1.safetensors")
    assert sd.naming.dit == "" and sd.parts() == {"unet", "text_encoder"}  # an SD file, read by the SD reader
    for family in ("flux1", "sd3"):
        write_lora(random_dit_lora(family, fused=True), tmp_path / f"{family}.safetensors")
        lf = read_lora(tmp_path / f"{family}.safetensors")
        assert lf.family() == family and lf.parts() == {"transformer"}
    both = random_dit_lora("flux1", fused=False, keep=lambda n: n.startswith("transformer_blocks.0.attn."))
    write_lora(both, tmp_path / "both.safetensors", to="peft", family="flux1")
    assert read_lora(tmp_path / "both.safetensors").family() == "flux1"  # the metadata lorakit wrote says so
    tensors = {}
    with safe_open(str(tmp_path / "both.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, tmp_path / "bare.safetensors")  # names that exist in both families, no metadata
    bare = read_lora(tmp_path / "bare.safetensors")
    assert bare.family() is None and bare.naming.dit == "dit"
    with pytest.raises(ValueError, match="exist in both FLUX.1 and SD3"):
        write_lora(bare, tmp_path / "k.safetensors", to="kohya")
    write_lora(bare, tmp_path / "k.safetensors", to="kohya", family="sd3")
    assert read_lora(tmp_path / "k.safetensors").family() == "sd3"


def test_bad_keys_are_named_with_the_file(tmp_path):
    good = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 32),
            "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(96, 2)}
    bad = {**good, "lora_unet_double_blocks_0_img_attn_qkvx.lora_down.weight": torch.zeros(2, 32),
           "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.zeros(2, 32),
           "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.zeros(96, 2)}
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(LoraFileError) as err:
        read_lora(tmp_path / "bad.safetensors")
    text = str(err.value)
    assert str(tmp_path / "bad.safetensors") in text and "double_blocks_0_img_attn_qkvx" in text
    assert "joint_blocks_0_x_block_attn_qkv" in text and "nothing was loaded" in text
    mixed = {**good, "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 32),
             "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 2)}
    save_file(mixed, tmp_path / "mixed.safetensors")
    with pytest.raises(LoraFileError, match="mixes original \\(fused\\) and diffusers"):
        read_lora(tmp_path / "mixed.safetensors")
    clip_as_t5 = {"lora_te3_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 32),
                  "lora_te3_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(64, 2), **good}
    save_file(clip_as_t5, tmp_path / "te.safetensors")
    with pytest.raises(LoraFileError, match="is a CLIP module but its prefix names te3"):
        read_lora(tmp_path / "te.safetensors")


def test_real_flux_shapes_split_as_diffusers_converts_them():
    """diffusers' kohya converter at FLUX.1's real widths (it hard-codes them) against lorakit's split."""
    from diffusers import FluxPipeline

    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, out, inn in (("double_blocks_3_img_attn_qkv", 9216, 3072), ("double_blocks_3_txt_mlp_0", 12288, 3072),
                           ("single_blocks_7_linear1", 21504, 3072), ("single_blocks_7_linear2", 3072, 15360)):
        sd[f"lora_unet_{name}.lora_down.weight"] = torch.randn(4, inn, generator=g)
        sd[f"lora_unet_{name}.lora_up.weight"] = torch.randn(out, 4, generator=g)
        sd[f"lora_unet_{name}.alpha"] = torch.tensor(2.0)
    from lorakit.formats.dit_io import from_state_dict

    ours = to_split(from_state_dict(dict(sd), {}, "real"))
    theirs = FluxPipeline.lora_state_dict(dict(sd))
    assert {k.rsplit(".", 2)[0] for k in theirs} == set(ours.modules)
    for key, m in ours.modules.items():
        expected = theirs[f"{key}.lora_B.weight"] @ theirs[f"{key}.lora_A.weight"]  # diffusers folds alpha/r in
        assert torch.allclose(_delta(m), expected, rtol=1e-5, atol=1e-5), key


def test_tables_are_consistent():
    for family, table in TABLES.items():
        for entry in table:
            assert len(entry.split) == len(entry.ratios) and entry.swap in ("", "always", "pre_only")
            assert family in families_of(entry.fused.replace("{i}", "0"), fused=True)


def test_comfy_files_with_lora_a_b_names_read_as_their_lora_down_up_twins(tmp_path):
    lf = random_dit_lora("flux1", fused=True, seed=9)
    write_lora(lf, tmp_path / "updown.safetensors", to="comfy")
    with safe_open(str(tmp_path / "updown.safetensors"), "pt") as f:
        renamed = {k.replace("lora_down.weight", "lora_A.weight").replace("lora_up.weight", "lora_B.weight"):
                   f.get_tensor(k) for k in f.keys()}
    assert any(".lora_A.weight" in k for k in renamed)
    save_file(renamed, tmp_path / "ab.safetensors")
    ab = read_lora(tmp_path / "ab.safetensors")
    assert ab.source == "comfy" and ab.family() == "flux1" and ab.naming.fused
    assert all(torch.equal(ab.modules[k][s], t) for k, m in lf.modules.items() for s, t in m.items())
