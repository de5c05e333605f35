"""FLUX.1/SD3 LoRA files on diffusers models: lorakit against diffusers' own loader and against the formulas.

Parity with diffusers covers what its loaders read (FluxPipeline: kohya ``lora_unet_``, ComfyUI
``diffusion_model.`` with lora_down/up, diffusers ``transformer.``/``text_encoder.``; SD3: diffusers keys).
diffusers cannot take two things here, so those are checked against the formula instead: its kohya
converter hard-codes FLUX.1's widths for ``single_blocks.N.linear1`` (the real-width split is compared
in tests/formats/test_dit_files.py), and it drops DoRA's ``dora_scale``, the kohya modules outside the
blocks (``img_in``, ``time_in``, ``final_layer``...) and, with transformers 5, kohya CLIP attention LoRAs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from dit_models import (
    clip,
    flux_inputs,
    flux_transformer,
    random_dit_lora,
    reference,
    run,
    sd3_inputs,
    sd3_transformer,
    t5,
)

from lorakit.formats.sd_io import write_lora
from lorakit.model import set_active_adapters
from lorakit.sd import load_lora

IDS = torch.tensor([[49406, 10, 20, 30, 49407, 49407], [49406, 40, 41, 49407, 49407, 49407]]) % 60


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _te_out(model, ids=IDS):
    with torch.no_grad():
        return model(ids).last_hidden_state


def _blocks_only(name: str) -> bool:  # what diffusers' kohya converter handles at tiny widths
    single_in = name.startswith("single_transformer_blocks.") and any(w in name for w in ("to_q", "to_k", "to_v", "proj_mlp"))
    return name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and not single_in


@pytest.mark.parametrize("style", ["kohya", "comfy", "peft"])
def test_flux_matches_diffusers_loader(tmp_path, style):
    from diffusers import FluxPipeline

    base, te = flux_transformer(), clip()
    lf = random_dit_lora("flux1", fused=style != "peft", seed=5, keep=_blocks_only,
                         te={"te1": te} if style == "peft" else None)
    path = tmp_path / f"{style}.safetensors"
    write_lora(lf, path, to=style)
    theirs = {"transformer": copy.deepcopy(base), "text_encoder": copy.deepcopy(te)}
    FluxPipeline(None, None, theirs["text_encoder"], None, None, None, theirs["transformer"]).load_lora_weights(path)
    ours = {"transformer": copy.deepcopy(base), "text_encoder": copy.deepcopy(te)}
    load_lora(ours, path)
    x = flux_inputs(base)
    assert _rel(run(theirs["transformer"], x), run(base, x)) > 1e-2  # the LoRA does something
    assert _rel(run(ours["transformer"], x), run(theirs["transformer"], x)) <= 1e-5
    assert _rel(_te_out(ours["text_encoder"]), _te_out(theirs["text_encoder"])) <= 1e-5


def test_sd3_matches_diffusers_loader_with_both_clips(tmp_path):
    from diffusers import StableDiffusion3Pipeline

    base, te1, te2 = sd3_transformer(), clip(16, True, 1), clip(16, True, 2)
    lf = random_dit_lora("sd3", fused=False, seed=6, te={"te1": te1, "te2": te2})
    write_lora(lf, tmp_path / "sd3.safetensors", to="peft")
    names = ("transformer", "text_encoder", "text_encoder_2")
    theirs = dict(zip(names, map(copy.deepcopy, (base, te1, te2)), strict=True))
    StableDiffusion3Pipeline(transformer=theirs["transformer"], scheduler=None, vae=None,
                             text_encoder=theirs["text_encoder"], tokenizer=None,
                             text_encoder_2=theirs["text_encoder_2"], tokenizer_2=None, text_encoder_3=None,
                             tokenizer_3=None).load_lora_weights(tmp_path / "sd3.safetensors")
    ours = dict(zip(names, map(copy.deepcopy, (base, te1, te2)), strict=True))
    load_lora(ours, tmp_path / "sd3.safetensors")
    x = sd3_inputs(base)
    assert _rel(run(ours["transformer"], x), run(theirs["transformer"], x)) <= 1e-5
    for name in names[1:]:
        assert _rel(_te_out(ours[name]), _te_out(theirs[name])) <= 1e-5
    ref = reference({"transformer": base}, lf, "sd3")["transformer"]
    assert _rel(run(ours["transformer"], x), run(ref, x)) <= 1e-5


def test_a_file_diffusers_saved_loads_to_its_peft_model(tmp_path):
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    base = flux_transformer()
    trained = copy.deepcopy(base)
    trained.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "proj_mlp", "proj_out",
                                                                       "ff.net.2", "norm1.linear"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    FluxPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(trained),
                                   transformer_lora_adapter_metadata=trained.peft_config["default"].to_dict())
    ours = {"transformer": copy.deepcopy(base)}
    load_lora(ours, tmp_path / "pytorch_lora_weights.safetensors")
    x = flux_inputs(base)
    assert _rel(run(ours["transformer"], x), run(trained, x)) <= 1e-5


def test_lorakit_applies_what_diffusers_drops(tmp_path):
    """Every module of a kohya Flux file (linear1, img_in/time_in/final_layer, CLIP attention, T5) against the
    formula; diffusers leaves the modules outside the blocks unadapted."""
    from diffusers import FluxPipeline

    base, te, t5_model = flux_transformer(), clip(), t5()
    lf = random_dit_lora("flux1", fused=True, seed=7, te={"te1": te, "te3": t5_model})
    path = tmp_path / "k.safetensors"
    write_lora(lf, path)
    models = {"transformer": base, "text_encoder": te, "text_encoder_2": t5_model}
    ours = {k: copy.deepcopy(v) for k, v in models.items()}
    load_lora(ours, path)
    ref = reference(models, lf, "flux1")
    x = flux_inputs(base)
    assert _rel(run(ours["transformer"], x), run(ref["transformer"], x)) <= 1e-5
    assert _rel(_te_out(ours["text_encoder"]), _te_out(ref["text_encoder"])) <= 1e-5
    assert _rel(_te_out(ours["text_encoder_2"]), _te_out(ref["text_encoder_2"])) <= 1e-5
    assert _rel(_te_out(ref["text_encoder_2"]), _te_out(t5_model)) > 1e-3
    outer = random_dit_lora("flux1", fused=True, seed=7, keep=lambda n: "blocks." not in n or "norm1" in n)
    write_lora(outer, tmp_path / "outer.safetensors")
    theirs = copy.deepcopy(base)
    FluxPipeline(None, None, None, None, None, None, theirs).load_lora_weights(tmp_path / "outer.safetensors")
    assert type(theirs.x_embedder).__name__ == "Linear" and type(theirs.proj_out).__name__ == "Linear"


@pytest.mark.parametrize("style", ["kohya", "comfy"])
def test_sd3_original_names_with_three_text_encoders_equal_the_formula(tmp_path, style):
    """diffusers has no SD3 kohya reader: SD3.5 dual attention, the swapped 2-chunk context AdaLN, CLIP-L/G, T5."""
    base, te1, te2, t5_model = sd3_transformer(), clip(16, True, 1), clip(16, True, 2), t5()
    lf = random_dit_lora("sd3", fused=True, seed=14, te={"te1": te1, "te2": te2, "te3": t5_model})
    write_lora(lf, tmp_path / "sd3.safetensors", to=style)
    models = {"transformer": base, "text_encoder": te1, "text_encoder_2": te2, "text_encoder_3": t5_model}
    ours = {k: copy.deepcopy(v) for k, v in models.items()}
    load_lora(ours, tmp_path / "sd3.safetensors")
    ref = reference(models, lf, "sd3")
    x = sd3_inputs(base)
    assert _rel(run(ours["transformer"], x), run(ref["transformer"], x)) <= 1e-5
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        assert _rel(_te_out(ours[name]), _te_out(ref[name])) <= 1e-5


def test_dora_is_kept_where_diffusers_drops_it_and_matches_peft_dora(tmp_path):
    from diffusers import FluxPipeline

    base = flux_transformer()
    lf = random_dit_lora("flux1", fused=True, seed=8, algo="dora", keep=_blocks_only)
    write_lora(lf, tmp_path / "dora.safetensors")
    x = flux_inputs(base)
    ours = {"transformer": copy.deepcopy(base)}
    load_lora(ours, tmp_path / "dora.safetensors")
    expected = run(reference({"transformer": base}, lf, "flux1")["transformer"], x)
    assert _rel(run(ours["transformer"], x), expected) <= 1e-5
    dropped = copy.deepcopy(base)
    FluxPipeline(None, None, None, None, None, None, dropped).load_lora_weights(tmp_path / "dora.safetensors")
    assert _rel(run(dropped, x), expected) > 1e-2  # diffusers ran it as plain LoRA
    write_lora(lf, tmp_path / "dora_peft.safetensors", to="peft")  # PEFT's DoRA: lora_magnitude_vector
    peft_dora = copy.deepcopy(base)
    FluxPipeline(None, None, None, None, None, None, peft_dora).load_lora_weights(tmp_path / "dora_peft.safetensors")
    assert _rel(run(peft_dora, x), expected) <= 1e-5


@pytest.mark.parametrize("quant", ["nf4", "fp4"])
def test_live_and_merged_on_a_4bit_base_equal_the_same_lora_on_its_dense_weights(tmp_path, quant):
    from lorakit.quant import dequantize_model, quantize_model

    q = flux_transformer()
    quantize_model(q, quant)
    dense = dequantize_model(copy.deepcopy(q))
    lf = random_dit_lora("flux1", fused=True, seed=9)
    write_lora(lf, tmp_path / "q.safetensors")
    x = flux_inputs(dense)
    expected = run(reference({"transformer": dense}, lf, "flux1")["transformer"], x)
    live = {"transformer": copy.deepcopy(q)}
    load_lora(live, tmp_path / "q.safetensors")
    merged = {"transformer": copy.deepcopy(q)}
    load_lora(merged, tmp_path / "q.safetensors", mode="merge")
    assert _rel(run(live["transformer"], x), expected) <= 1e-5
    assert _rel(run(merged["transformer"], x), expected) <= 1e-5
    assert _rel(expected, run(dense, x)) > 1e-2


def test_strengths_per_file_and_part_stack_and_switch(tmp_path):
    base, te = flux_transformer(), clip()
    a = random_dit_lora("flux1", fused=True, seed=10, te={"te1": te})
    b = random_dit_lora("flux1", fused=False, seed=11, te={"te1": te})
    write_lora(a, tmp_path / "a.safetensors")
    write_lora(b, tmp_path / "b.safetensors", to="peft")
    models = {"transformer": base, "text_encoder": te}
    ours = {k: copy.deepcopy(v) for k, v in models.items()}
    names = load_lora(ours, [tmp_path / "a.safetensors", tmp_path / "b.safetensors"], unet_strength=[0.5, -1.0],
                      te_strength=[0.0, 2.0])
    step = reference(models, a, "flux1", {"transformer": 0.5, "text_encoder": 0.0})
    both = reference(step, b, "flux1", {"transformer": -1.0, "text_encoder": 2.0})
    x = flux_inputs(base)
    assert _rel(run(ours["transformer"], x), run(both["transformer"], x)) <= 1e-5
    assert _rel(_te_out(ours["text_encoder"]), _te_out(both["text_encoder"])) <= 1e-5
    set_active_adapters(ours["transformer"], {names[0]: 0.5})
    assert _rel(run(ours["transformer"], x), run(step["transformer"], x)) <= 1e-5
    merged = {k: copy.deepcopy(v) for k, v in models.items()}
    load_lora(merged, [tmp_path / "a.safetensors", tmp_path / "b.safetensors"], unet_strength=[0.5, -1.0],
              te_strength=[0.0, 2.0], mode="merge")
    assert _rel(run(merged["transformer"], x), run(both["transformer"], x)) <= 1e-5


def test_lokr_rows_that_do_not_split_run_as_dense_rows(tmp_path):
    from lorakit.formats.lorafile import LoraFile, Naming

    g = torch.Generator().manual_seed(12)
    lf = LoraFile({"transformer.single_blocks.0.linear1": {  # ΔW (224, 32) in blocks of 7 rows: q ends at 32
        "lokr_w1": torch.randn(32, 4, generator=g), "lokr_w2": torch.randn(7, 8, generator=g) * 0.1}},
        {}, Naming(dit="flux1", fused=True))
    write_lora(lf, tmp_path / "lokr.safetensors")
    base = flux_transformer()
    ours = {"transformer": copy.deepcopy(base)}
    load_lora(ours, tmp_path / "lokr.safetensors")
    x = flux_inputs(base)
    assert _rel(run(ours["transformer"], x), run(reference({"transformer": base}, lf, "flux1")["transformer"], x)) <= 1e-5
    with pytest.raises(ValueError, match="LoKr factors cover rows in blocks of 7"):
        write_lora(lf, tmp_path / "lokr_peft.safetensors", to="peft")


def test_wrong_family_is_refused_before_anything_changes(tmp_path):
    write_lora(random_dit_lora("flux1", fused=True), tmp_path / "flux.safetensors")
    model = sd3_transformer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="LoRA for FLUX1 but the model is SD3"):
        load_lora({"transformer": model}, tmp_path / "flux.safetensors")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_chroma_takes_flux_files_on_the_modules_it_has(tmp_path):
    from diffusers import ChromaTransformer2DModel

    torch.manual_seed(0)
    base = ChromaTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                    axes_dims_rope=[4, 4, 8], approximator_num_channels=8,
                                    approximator_hidden_dim=32, approximator_layers=1).eval()
    lf = random_dit_lora("flux1", fused=True, seed=13, model=base)
    assert "transformer.distilled_guidance_layer.layers.0.in_layer" in lf.modules  # Chroma's own modules
    write_lora(lf, tmp_path / "chroma.safetensors")
    ours = {"transformer": copy.deepcopy(base)}
    load_lora(ours, tmp_path / "chroma.safetensors")
    x = {k: v for k, v in flux_inputs(flux_transformer(), batch=1).items() if k not in ("guidance", "pooled_projections")}
    assert _rel(run(ours["transformer"], x), run(reference({"transformer": base}, lf, "flux1")["transformer"], x)) <= 1e-5


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_live_adapters_saved_in_every_format_load_back_to_the_same_model(tmp_path, variant):
    """What a trainer saves: lorakit adapters on the transformer, CLIP and T5 -> files -> a fresh model."""
    from diffusers import FluxPipeline

    from lorakit.config import LoraConfig
    from lorakit.inject import inject
    from lorakit.sd import lora_file_from_model

    base = {"transformer": flux_transformer(), "text_encoder": clip(), "text_encoder_2": t5()}
    live = {k: copy.deepcopy(v) for k, v in base.items()}
    targets = {"transformer": ["to_q", "to_k", "to_v", "proj_mlp", "to_out.0", "norm_out.linear", "x_embedder"],
               "text_encoder": ["q_proj", "fc1"], "text_encoder_2": ["q", "wi_0"]}
    torch.manual_seed(15)
    for part, names in targets.items():
        inject(live[part], LoraConfig(r=4, alpha=8, target_modules=names, variant=variant), "default")
        with torch.no_grad():
            for name, p in live[part].named_parameters():
                if "lora_B" in name or "magnitude" in name:
                    p.add_(torch.randn_like(p) * 0.1)
    lf = lora_file_from_model(live, "default")
    assert lf.family() == "flux1" and lf.parts() == {"transformer", "te1", "te3"}
    x = flux_inputs(base["transformer"])
    expected = run(live["transformer"], x)
    for to in ("kohya", "peft", "comfy"):
        notes = write_lora(lf, tmp_path / f"{to}.safetensors", to=to)
        assert (notes != []) == (to != "peft")  # separate q/k/v factors fuse block-diagonally, and say so
        ours = {k: copy.deepcopy(v) for k, v in base.items()}
        load_lora(ours, tmp_path / f"{to}.safetensors")
        assert _rel(run(ours["transformer"], x), expected) <= 1e-5, to
        for name in ("text_encoder", "text_encoder_2"):
            assert _rel(_te_out(ours[name]), _te_out(live[name])) <= 1e-5, (to, name)
    theirs = copy.deepcopy(base["transformer"])  # diffusers needs the text encoder the file names
    FluxPipeline(None, None, copy.deepcopy(base["text_encoder"]), None, None, None, theirs).load_lora_weights(
        tmp_path / "peft.safetensors")
    assert _rel(run(theirs, x), expected) <= 1e-5
