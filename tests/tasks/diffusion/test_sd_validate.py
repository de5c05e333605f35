"""``lorakit validate`` and ``lorakit train`` on SD configs that used to pass validate and then fail (or crash
in validate): each is one line from both commands, before anything is written (issue 19.11, 19.12, 19.24, 19.28)."""

import pytest
import sd_pipes
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from lorakit.cli import app, commands  # noqa: F401  (commands registers the commands)


def image(path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (200, 30, 60)).save(path)


def invoke(tmp_path, cfg: dict, command: str = "validate"):
    path = tmp_path / "sd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, [command, str(path)])
    return result.exit_code, " ".join(result.output.split())  # the error console may wrap long lines


def both_refuse(tmp_path, cfg: dict, expected: str) -> None:
    """validate and train: exit 1 (a user error, not an internal one) with ``expected`` in one problem line."""
    for command in ("validate", "train"):
        code, out = invoke(tmp_path, cfg, command)
        assert code == 1 and expected in out and "internal error" not in out, (command, code, out)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("data", [{"enable_bucket": True, "resolution": 32, "bucket_reso_steps": 64},
                                  {"enable_bucket": True, "resolution": 32, "bucket_reso_steps": 64,
                                   "min_bucket_reso": 16, "max_bucket_reso": 1024}])
def test_resolution_below_one_bucket_step_is_a_problem_not_a_crash(tmp_path, sd1_dir, data):
    model, images = sd1_dir
    both_refuse(tmp_path, sd_pipes.sd_config(tmp_path, model, images, data=data),
                "resolution 32x32 is smaller than one bucket step (bucket_reso_steps=64)")


def test_small_images_are_upscaled_with_a_note_and_no_upscale_keeps_their_size(tmp_path, sd1_dir):
    model, _ = sd1_dir
    data = tmp_path / "img"
    image(data / "2_dot" / "small.png", 24, 40)
    image(data / "2_dot" / "big.png", 64, 64)
    cfg = sd_pipes.sd_config(tmp_path, model, data, data={"enable_bucket": True, "bucket_reso_steps": 8})
    code, out = invoke(tmp_path, cfg)  # 24x40 is below min_bucket_reso=64: kohya upscales it
    assert code == 0, out
    assert "1 image(s) are smaller than their bucket and are upscaled" in out and "small.png (24x40 -> " in out
    cfg["data"]["bucket_no_upscale"] = True  # min/max do not apply: its own size, rounded down to the step
    code, out = invoke(tmp_path, cfg)
    assert code == 0 and " 24x40 " in out and "are upscaled, by" not in out, out
    image(data / "2_dot" / "tiny.png", 4, 40)
    both_refuse(tmp_path, cfg, "tiny.png: 4x40 gives an empty bucket (0, 40): with bucket_no_upscale")


def test_buckets_off_by_default_as_in_kohya_and_the_crop_is_said(tmp_path, sd1_dir):
    model, _ = sd1_dir
    data = tmp_path / "img"
    image(data / "1_wide" / "wide.png", 128, 64)
    cfg = sd_pipes.sd_config(tmp_path, model, data)
    code, out = invoke(tmp_path, cfg)
    assert code == 0 and "64x64" in out and "enable_bucket is off (kohya's default): 1 image(s)" in out, out


def test_a_missing_model_adds_no_wrong_bucket_step_problem(tmp_path, sd1_dir):
    _, images = sd1_dir
    cfg = sd_pipes.sd_config(tmp_path, tmp_path / "no-model", images,
                            data={"enable_bucket": True, "bucket_reso_steps": 8, "min_bucket_reso": 64})
    code, out = invoke(tmp_path, cfg)
    assert code == 1 and f"model.path='{tmp_path / 'no-model'}': not found" in out, out
    assert "not a multiple of" not in out, out


@pytest.mark.parametrize("case", ["optimizer_args", "cache_dir", "lora_as_model"])
def test_bad_values_that_used_to_pass(tmp_path, sd1_dir, case):
    model, images = sd1_dir
    if case == "optimizer_args":
        cfg = sd_pipes.sd_config(tmp_path, model, images, train={"optimizer_args": {"betass": [0.9, 0.99]}})
        expected = "train.optimizer_args.betass: torch.optim.adamw.AdamW has no argument 'betass'; did you mean 'betas'?"
    elif case == "cache_dir":
        (tmp_path / "cachefile").write_text("x")
        cfg = sd_pipes.sd_config(tmp_path, model, images, data={"cache_dir": str(tmp_path / "cachefile")})
        expected = f"data.cache_dir='{tmp_path / 'cachefile'}': {tmp_path / 'cachefile'} is a file"
    else:
        lora = tmp_path / "my_lora.safetensors"
        save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4)}, lora)
        cfg = sd_pipes.sd_config(tmp_path, lora, images)
        cfg["model"]["config"] = str(model)
        expected = "is a LoRA file (it holds 'lora_unet_mid_block_attentions_0_proj_in.lora_down.weight'), not a model"
    both_refuse(tmp_path, cfg, expected)


@pytest.mark.parametrize("where", ["equal", "inside", "contains"])
def test_output_dir_and_dataset_folders_stay_apart(tmp_path, sd1_dir, where):
    model, _ = sd1_dir
    data = tmp_path / "data"
    image(data / "2_x" / "a.png", 64, 64)
    out = {"equal": data, "inside": data / "runs", "contains": tmp_path}[where]
    cfg = sd_pipes.sd_config(tmp_path, model, data, train={"output_dir": str(out)})
    expected = "is inside train.output_dir" if where == "contains" else "the dataset folder train_data_dir"
    for command in ("validate", "train"):
        code, text = invoke(tmp_path, cfg, command)
        assert code == 1 and expected in text, (command, text)
    assert sorted(p.name for p in data.rglob("*")) == ["2_x", "a.png"]  # nothing written into the dataset


def test_absurd_repeats_are_a_problem_not_a_memory_error(tmp_path, sd1_dir):
    model, _ = sd1_dir
    data = tmp_path / "img"
    image(data / "1000000000000_x" / "a.png", 64, 64)
    both_refuse(tmp_path, sd_pipes.sd_config(tmp_path, model, data), "1000000000000 repeats")
    toml = tmp_path / "ds.toml"
    toml.write_text(f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{data / '1000000000000_x'}'\n"
                    "num_repeats = 99999999999\n")
    cfg = sd_pipes.sd_config(tmp_path, model, data)
    cfg["data"] = {"dataset_config": str(toml), "cache_dir": str(tmp_path / "cache")}
    both_refuse(tmp_path, cfg, "num_repeats=99999999999: expected at most 100,000")
