"""FLUX.1 / SD3 training end to end through the shared loop, on tiny pipeline directories: the run
directory kohya users expect (kohya file with the flow metadata, samples through lorakit's generation
code, loss by timestep), resume twice equals an uninterrupted run bit for bit, SD3 with cached text
states and diffusers-key output."""

import json

import pytest
import sd_pipes
import torch
from dit_tiny import save_pipeline
from safetensors import safe_open
from safetensors.torch import load_file
from test_train import StopAt  # the SD trainer tests' interrupting callback

from lorakit.train import run
from lorakit.train.config import from_dict


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    return (save_pipeline(root / "flux", "flux1"), save_pipeline(root / "sd3", "sd3"),
            sd_pipes.save_dataset(root / "img", n=4, size=(32, 32)))


def dit_config(tmp, model, images, **sections) -> dict:
    cfg = sd_pipes.sd_config(tmp, model, images, network={"dim": 4, "alpha": 4},
                            data={"resolution": 32, "enable_bucket": True, "min_bucket_reso": 16, "max_bucket_reso": 64,
                                  "bucket_reso_steps": 4},
                            train={"epochs": 2, "batch_size": 2, "lr": 1e-3, "t5xxl_max_token_length": 8,
                                   "timestep_sampling": "shift", "discrete_flow_shift": 3.1582})
    for name, extra in sections.items():
        cfg.setdefault(name, {}).update(extra)
    return cfg


def test_flux_run_writes_a_kohya_file_with_flow_metadata_and_samples(tmp_path, dirs):
    from lorakit.formats.sd_io import read_lora

    flux, _, images = dirs
    (tmp_path / "prompts.txt").write_text("sks dog --w 32 --h 32 --s 2 --d 7 --g 1.0\nred cat --w 32 --h 32 --s 2\n")
    cfg = from_dict(dit_config(tmp_path, flux, images, train={"gradient_checkpointing": True, "plot": True},
                               sample={"prompts": str(tmp_path / "prompts.txt")}))
    result = run(cfg, quiet=True)
    out = tmp_path / "run"
    for name in ("tiny-000001.safetensors", "tiny.safetensors", "metrics.jsonl", "loss_by_timestep.json",
                 "loss_by_timestep.png", "summary.json", "checkpoint-000008"):
        assert (out / name).exists(), name
    with safe_open(str(out / "tiny.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv") for k in keys)
    assert any(k.startswith("lora_te1_") for k in keys)  # CLIP-L gets a LoRA, T5 does not (kohya)
    assert not any(k.startswith("lora_te3_") for k in keys)
    assert meta["ss_timestep_sampling"] == "shift" and meta["ss_discrete_flow_shift"] == "3.1582"
    assert meta["ss_model_prediction_type"] == "raw" and meta["ss_guidance_scale"] == "1.0"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora" and meta["ss_steps"] == "8"
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_sks dog": {"n_repeats": 2, "img_count": 4}}
    assert read_lora(out / "tiny.safetensors").family() == "flux1"
    rows = json.loads((out / "loss_by_timestep.json").read_text())
    assert sum(r["samples"] for r in rows) == 16  # 8 steps x batch 2
    samples = sorted(p.name for p in (out / "sample").iterdir())
    assert "tiny_e000002_00_7.png" in samples and "tiny_e000002_01_1.png" in samples
    assert result.summary["family"] == "flux1" and result.summary["steps"] == 8
    assert result.summary["adapted_modules"]["transformer"] > 10


def test_resume_twice_equals_an_uninterrupted_run(tmp_path, dirs):
    flux, _, images = dirs
    extra = {"train": {"save_every_n_steps": 2, "save_every_n_epochs": None, "noise_offset": 0.05,
                       "timestep_sampling": "logit_normal", "weighting_scheme": "cosmap"},
             "network": {"dropout": 0.1, "train_unet_only": True}, "data": {"cache_text_encoder_outputs": True}}
    whole = run(from_dict(dit_config(tmp_path / "a", flux, images, **extra)), quiet=True)
    cfg = from_dict(dit_config(tmp_path / "b", flux, images, **extra))
    run(cfg, [StopAt(3)], quiet=True)
    run(cfg, [StopAt(5)], resume=True, quiet=True)
    resumed = run(cfg, resume=True, quiet=True)
    assert resumed.summary["steps"] == whole.summary["steps"] == 8
    a, b = load_file(tmp_path / "a/run/tiny.safetensors"), load_file(tmp_path / "b/run/tiny.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(r)["step"] for r in (tmp_path / "b/run/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_sd3_run_with_cached_text_states_writes_diffusers_keys(tmp_path, dirs):
    _, sd3, images = dirs
    cfg = from_dict(dit_config(tmp_path, sd3, images, network={"train_unet_only": True, "train_block_indices": "1"},
                               data={"cache_text_encoder_outputs": True, "cache_latents": True},
                               train={"save_format": "peft", "weighting_scheme": "sigma_sqrt"}))
    result = run(cfg, quiet=True)
    with safe_open(str(tmp_path / "run/tiny.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert keys and all(k.startswith("transformer.transformer_blocks.1.") for k in keys)
    assert json.loads(meta["lora_adapter_metadata"])["transformer.r"] == 4
    assert meta["ss_model_prediction_type"] == "sigma_scaled" and meta["ss_weighting_scheme"] == "sigma_sqrt"
    assert result.summary["family"] == "sd3" and result.summary["prediction_type"] == "sigma_scaled"
