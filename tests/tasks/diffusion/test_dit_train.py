"""FLUX.1 / SD3 training end to end through the shared loop, on tiny pipeline directories: the run
directory kohya users expect (kohya file with the flow metadata, samples through lorakit's generation
code, loss by timestep), resume twice equals an uninterrupted run bit for bit, SD3 with cached text
states and diffusers-key output; the 16-channel VAE's shift and scale in training's latents (cached and not)
and generation's decoding, as diffusers' Flux/SD3 training scripts and pipelines apply them."""

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


RESUME = {  # FLUX.1: cached text states, the transformer alone; SD3: its two CLIPs trained (encoded every step)
    "flux1": {"train": {"noise_offset": 0.05, "timestep_sampling": "logit_normal", "weighting_scheme": "cosmap"},
              "network": {"dropout": 0.1, "train_unet_only": True}, "data": {"cache_text_encoder_outputs": True}},
    "sd3": {"train": {"timestep_sampling": "mode", "weighting_scheme": "sigma_sqrt", "ip_noise_gamma": 0.1,
                      "text_encoder_lr": 5e-4},
            "network": {"dropout": 0.1, "rank_dropout": 0.1}, "data": {"caption_dropout_rate": 0.3}}}
PLAN = {"flux1": (2, 2, (3, 5), 8), "sd3": (1, 1, (1, 3), 4)}  # epochs, save every n steps, stops, steps in all


@pytest.mark.parametrize("family", list(RESUME))
def test_resume_twice_equals_an_uninterrupted_run(tmp_path, dirs, family):
    model, images = dirs[0 if family == "flux1" else 1], dirs[2]
    extra = {k: dict(v) for k, v in RESUME[family].items()}
    epochs, every, stops, total = PLAN[family]
    extra["train"].update(epochs=epochs, save_every_n_steps=every, save_every_n_epochs=None)
    whole = run(from_dict(dit_config(tmp_path / "a", model, images, **extra)), quiet=True)
    cfg = from_dict(dit_config(tmp_path / "b", model, images, **extra))
    run(cfg, [StopAt(stops[0])], quiet=True)
    run(cfg, [StopAt(stops[1])], resume=True, quiet=True)
    resumed = run(cfg, resume=True, quiet=True)
    assert resumed.summary["steps"] == whole.summary["steps"] == total
    a, b = load_file(tmp_path / "a/run/tiny.safetensors"), load_file(tmp_path / "b/run/tiny.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith(("lora_te1_", "lora_te2_")) for k in a) == (family == "sd3")
    steps = [json.loads(r)["step"] for r in (tmp_path / "b/run/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, total + 1))


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



def _first_step_latents(tmp, model, images, cached: bool, sharp: bool, monkeypatch):
    """(the first batch, the latents its training step gives the transformer, the VAE) of a run on ``model``;
    ``sharp``: the VAE's posterior log-variance is −30 everywhere (σ = e^-15: every sample is the mode)."""
    from lorakit.tasks.diffusion import dit_task

    cfg = from_dict(dit_config(tmp, model, images, data={"cache_latents": cached}, network={"train_unet_only": True}))
    comps = dit_task.load_dit_components(str(model), None, torch.float32)
    vae = comps["vae"]
    if sharp:
        with torch.no_grad():
            vae.quant_conv.weight[vae.config.latent_channels:].zero_()
            vae.quant_conv.bias[vae.config.latent_channels:].fill_(-30.0)
    parts = dit_task.build(cfg, torch.device("cpu"), comps)
    net, seen = parts.model, []
    real = net.predict

    def spy(latents, *args):
        seen.append(latents.detach().clone())
        return real(latents, *args)

    monkeypatch.setattr(net, "predict", spy)
    batch = next(iter(dit_task.data(cfg, parts, 0, 1).epoch(0)))
    net(batch)
    return batch, seen[0], vae


@pytest.mark.parametrize("family", ["flux1", "sd3"])
def test_latents_are_the_vae_sample_shifted_then_scaled_and_generation_inverts_it(tmp_path, dirs, family,
                                                                                  monkeypatch):
    """diffusers' train_dreambooth_lora_flux/sd3.py: latents = (vae.encode(x).latent_dist.sample() − shift_factor)
    · scaling_factor (the tiny VAE: shift 0.1, scale 0.5, so scaling before shifting would be 0.05 off).
    Uncached: the batch's own sample (drawn from its ``rng_seed``); cached: with a sharp posterior, the mode.
    Generation hands the VAE the final latents / scaling_factor + shift_factor (the pipelines' decoding)."""
    import diffusers

    from lorakit.sd import dit as sd_dit
    from lorakit.sd.generate import generate_images
    from lorakit.sd.pipeline import load_pipeline
    from lorakit.tasks.diffusion.step import batch_rng

    model, images = dirs[0 if family == "flux1" else 1], dirs[2]
    batch, used, vae = _first_step_latents(tmp_path / "a", model, images, False, False, monkeypatch)
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    assert (shift, scale) == (0.1, 0.5)
    with torch.no_grad(), batch_rng(batch["rng_seed"], torch.device("cpu")):
        want = (vae.encode(batch["pixels"]).latent_dist.sample() - shift) * scale
    torch.testing.assert_close(used, want, rtol=0, atol=1e-6)
    pixels = batch["pixels"]
    for cached in (False, True):  # the same first batch (images, crops) from the cache as from the pixels
        batch, used, vae = _first_step_latents(tmp_path / f"sharp-{cached}", model, images, cached, True, monkeypatch)
        with torch.no_grad():
            want = (vae.encode(pixels).latent_dist.mode() - shift) * scale
        torch.testing.assert_close(used, want, rtol=0, atol=1e-5)
        assert ("latents" in batch) == cached

    pipe = load_pipeline(str(model))[0]
    monkeypatch.setattr(sd_dit, "T5_MIN_LENGTH", 16)  # Forge's 256 T5 tokens cost seconds here
    steps, decoded = [], []
    real_step, real_decode = diffusers.FlowMatchEulerDiscreteScheduler.step, pipe.vae.decode
    monkeypatch.setattr(diffusers.FlowMatchEulerDiscreteScheduler, "step",
                        lambda self, *a, **k: steps.append(real_step(self, *a, **k)) or steps[-1])
    monkeypatch.setattr(pipe.vae, "decode", lambda z, *a, **k: decoded.append(z.clone()) or real_decode(z, *a, **k))
    generate_images(pipe, "sks dog", width=32, height=32, steps=2, seed=1)
    last = steps[-1][0]
    if family == "flux1":
        last = pipe._unpack_latents(last, 32, 32, pipe.vae_scale_factor)
    assert len(steps) == 2 and len(decoded) == 1
    torch.testing.assert_close(decoded[0], last / scale + shift, rtol=0, atol=1e-6)
