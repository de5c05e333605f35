"""SD training end to end on a tiny pipeline directory: the run directory kohya users expect, resume twice
equals an uninterrupted run (and the counters add up), samples, config errors at once, ``validate``."""

import json

import pytest
import sd_pipes
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from lorakit.cli import app, commands  # noqa: F401  (commands registers the commands)
from lorakit.config import ConfigError
from lorakit.train import Callback, run
from lorakit.train.config import from_dict


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        state.should_stop |= state.step == self.step


def test_run_writes_kohya_files_metadata_samples_and_plots(tmp_path, sd1_dir):
    model, data = sd1_dir
    (tmp_path / "prompts.txt").write_text("sks dog --w 64 --h 64 --s 2 --d 7\n# a comment\nred cat --w 64 --h 64 --s 2\n")
    cfg = from_dict(sd_pipes.sd_config(tmp_path, model, data, train={"plot": True, "gradient_checkpointing": True},
                                      sample={"prompts": str(tmp_path / "prompts.txt"), "before_training": True},
                                      network={"conv_dim": 2, "conv_alpha": 1}))
    result = run(cfg, quiet=True)
    out = tmp_path / "run"
    for name in ("tiny-000001.safetensors", "tiny.safetensors", "metrics.jsonl", "loss.png", "summary.json",
                 "loss_by_timestep.json", "loss_by_timestep.png", "config.yaml", "checkpoint-000008"):
        assert (out / name).exists(), name
    assert not (out / "tiny-000002.safetensors").exists()  # the last epoch is the final file (kohya)
    with safe_open(str(out / "tiny.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
        assert f.get_tensor(keys[0]).dtype == torch.float16  # save_precision fp16 by default
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_network_dim"] == "4"
    assert meta["ss_steps"] == "8" and meta["ss_epoch"] == "2" and meta["ss_output_name"] == "tiny"
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_sks dog": {"n_repeats": 2, "img_count": 4}}
    assert json.loads(meta["ss_network_args"])["conv_dim"] == "2" and meta["sshs_model_hash"]
    assert any("resnets" in k for k in keys) and any(k.startswith("lora_te_") for k in keys)
    rows = json.loads((out / "loss_by_timestep.json").read_text())
    assert sum(r["samples"] for r in rows) == 16  # 8 steps x batch 2
    samples = sorted(p.name for p in (out / "sample").iterdir())
    assert "tiny_e000000_00_7.png" in samples and "tiny_e000002_01_1.png" in samples  # seed = train.seed + index
    assert "tiny_sheet_e000002.png" in samples
    from PIL import Image

    from lorakit.sd.infotext import parse_infotext

    with Image.open(out / "sample" / "tiny_e000002_00_7.png") as png:  # A1111's infotext, as sd generate writes it
        info = parse_infotext(png.text["parameters"])
    assert (info["Prompt"], info["Steps"], info["Seed"], info["Size-1"], info["Size-2"]) == ("sks dog", "2", "7",
                                                                                             "64", "64")
    assert info["Sampler"] == "Euler a" and info["CFG scale"] == "7.5" and info["Model"] == "model"
    assert result.summary["family"] == "sd1" and result.summary["steps"] == 8


def test_resume_twice_equals_an_uninterrupted_run(tmp_path, sd1_dir):
    model, data = sd1_dir
    extra = {"train": {"save_every_n_steps": 2, "save_every_n_epochs": None, "noise_offset": 0.05, "keep_last": 2},
             "network": {"dropout": 0.1}}
    whole = run(from_dict(sd_pipes.sd_config(tmp_path / "a", model, data, **extra)), quiet=True)
    cfg = from_dict(sd_pipes.sd_config(tmp_path / "b", model, data, **extra))
    run(cfg, [StopAt(3)], quiet=True)
    with safe_open(str(tmp_path / "b/run/tiny-step00000002.safetensors"), "pt") as f:
        first = f.metadata()  # written by the first session
    run(cfg, [StopAt(5)], resume=True, quiet=True)
    resumed = run(cfg, resume=True, quiet=True)
    assert resumed.summary["steps"] == whole.summary["steps"] == 8 and resumed.summary["epochs"] == 2
    a, b = load_file(tmp_path / "a/run/tiny.safetensors"), load_file(tmp_path / "b/run/tiny.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with safe_open(str(tmp_path / "b/run/tiny.safetensors"), "pt") as f:
        assert f.metadata()["ss_steps"] == "8" and f.metadata()["ss_epoch"] == "2"
        # the start is written once, when the first session began, and kept across both resumes (issue 19.21)
        assert f.metadata()["ss_training_started_at"] == first["ss_training_started_at"]
    assert float(first["ss_training_started_at"]) < float(first["ss_training_finished_at"])
    s = resumed.summary  # whole-run figures: three sessions add up
    assert s["samples_seen"] == whole.summary["samples_seen"] == 16 and s["steps"] == 8
    assert s["train_seconds"] > s["session"]["seconds"] > 0 and s["session"]["from_step"] == 4
    again = run(cfg, resume=True, quiet=True)  # resuming the finished run: no step, the totals stay
    on_disk = json.loads((tmp_path / "b/run/summary.json").read_text())
    for key in ("steps", "samples_seen", "final_loss", "started_at"):
        assert again.summary[key] == on_disk[key] == s[key], key
    saved = json.loads((tmp_path / "b/run/checkpoint-000008/trainer_state.json").read_text())["train_seconds"]
    assert on_disk["train_seconds"] >= saved > s["session"]["seconds"] and on_disk["samples_per_s"] > 0
    steps = [json.loads(r)["step"] for r in (tmp_path / "b/run/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    for run_dir in (tmp_path / "a/run", tmp_path / "b/run"):  # keep_last 2: files and checkpoints
        assert sorted(p.name for p in run_dir.glob("tiny-*")) == ["tiny-000001.safetensors",  # step 4 ends epoch 1
                                                                  "tiny-step00000006.safetensors"]
        assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-000006", "checkpoint-000008"]
        # train.plot false (sd_config's default): the numbers, no picture
        assert (run_dir / "loss_by_timestep.json").is_file() and not list(run_dir.glob("*.png"))


def test_config_errors_are_collected(tmp_path, sd1_dir):
    model, data = sd1_dir
    cfg = sd_pipes.sd_config(tmp_path, model, data, network={"module": "lokra", "dim": 0},
                            train={"min_snr_gamma": -1, "optimiser": "lion", "max_token_length": 100})
    cfg["data"]["resolution"] = "big"
    with pytest.raises(ConfigError) as exc:
        from_dict(cfg)
    text = str(exc.value)
    for part in ("network.module", "network.dim=0", "min_snr_gamma", "did you mean train.optimizer",
                 "max_token_length", "data.resolution"):
        assert part in text, part


def test_validate_lists_dataset_and_model_problems_then_the_table(tmp_path, sd1_dir):
    from PIL import Image

    model, data = sd1_dir
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(sd_pipes.sd_config(tmp_path, model, data)))
    result = CliRunner().invoke(app, ["validate", str(ok)])
    assert result.exit_code == 0, result.output
    assert "64x64" in result.output and "optimizer steps: 4 per epoch x 2 epochs = 8" in result.output
    bad_data = tmp_path / "bad"
    (bad_data / "no_prefix").mkdir(parents=True)
    (bad_data / "3_cat").mkdir()
    Image.new("RGB", (16, 16)).save(bad_data / "3_cat" / "small.png")
    (bad_data / "3_cat" / "broken.png").write_bytes(b"not a png")
    (model / "vae").rename(tmp_path / "vae-moved")
    try:
        bad = sd_pipes.sd_config(tmp_path, model, bad_data, data={"enable_bucket": True, "bucket_reso_steps": 48},
                                 train={"lr": -1})
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
        result = CliRunner().invoke(app, ["validate", str(tmp_path / "bad.yaml")])
    finally:
        (tmp_path / "vae-moved").rename(model / "vae")
    assert result.exit_code == 1
    out = "".join(result.output.split())  # the error console wraps long lines anywhere
    for part in ("(5 problems)", "train.lr", "there is no vae/ folder", "broken.png", "unreadable or corrupt",
                 "no repeat prefix", "bucket_reso_steps=48 is not a multiple of 64"):
        assert "".join(part.split()) in out, (part, out)
