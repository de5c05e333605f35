"""Sample prompts during training (issue 19.4 and 19.27): ``validate`` and ``train`` read the prompt file with
the trainer's parser and refuse a bad one before writing anything; a sample that fails never costs the training
(the checkpoint and LoRA file come first, the error is reported, training goes on, a resume redraws)."""

import json

import pytest
import sd_pipes
import yaml
from typer.testing import CliRunner

from lorakit.cli import app, commands  # noqa: F401  (commands registers the commands)
from lorakit.tasks.diffusion import sampling
from lorakit.train import run
from lorakit.train.config import from_dict

BAD = {"prompts.txt": ("a dog --d 1\na cat --ss not_a_sampler\n", "prompts.txt:2: --ss 'not_a_sampler'"),
       "size.txt": ("a dog --w abc\n", "size.txt:1: --w 'abc' is not a valid int"),
       "broken.toml": ('[prompt]\n[[prompt.subset]]\nprompt = "a dog\n', "broken.toml: not valid TOML")}


@pytest.mark.parametrize("name", BAD)
def test_validate_and_train_refuse_a_bad_prompt_file_naming_file_and_line(tmp_path, sd1_dir, name):
    model, data = sd1_dir
    text, expected = BAD[name]
    (tmp_path / name).write_text(text)
    cfg = tmp_path / "sd.yaml"
    cfg.write_text(yaml.safe_dump(sd_pipes.sd_config(tmp_path, model, data, sample={"prompts": str(tmp_path / name)})))
    for command in ("validate", "train"):
        result = CliRunner().invoke(app, [command, str(cfg)])
        assert result.exit_code == 1, result.output
        assert expected in "".join(result.output.split("\n")), result.output
    assert not (tmp_path / "run").exists()  # no config.yaml, no sample/: nothing was written


def test_a_failing_sample_never_costs_the_training(tmp_path, sd1_dir, monkeypatch, capsys):
    model, data = sd1_dir
    (tmp_path / "p.txt").write_text("sks dog --w 64 --h 64 --s 2 --d 7\nred cat --w 64 --h 64 --s 2\n")
    cfg = from_dict(sd_pipes.sd_config(tmp_path, model, data, sample={"prompts": str(tmp_path / "p.txt"),
                                                                     "every_n_steps": 2, "every_n_epochs": None},
                                      train={"max_steps": 4, "save_every_n_steps": 2, "save_every_n_epochs": None}))
    real, seen = sampling.generate_images, []
    run_dir = tmp_path / "run"

    def flaky(pipe, prompt, *args, **kwargs):
        step = len(seen) // 2 * 2 + 2  # samplings at steps 2 and 4, two prompts each
        seen.append({"step": step, "checkpoint": (run_dir / f"checkpoint-{step:06d}").is_dir(),
                     "lora": step == 4 or (run_dir / f"tiny-step{step:08d}.safetensors").is_file()})
        if prompt == "red cat":
            raise RuntimeError("CUDA out of memory (simulated)")
        if step == 4:
            raise KeyboardInterrupt  # the process dies while drawing the last sampling
        return real(pipe, prompt, *args, **kwargs)

    monkeypatch.setattr(sampling, "generate_images", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, quiet=True)
    assert all(s["checkpoint"] and s["lora"] for s in seen), seen  # saved before every sampling
    err = capsys.readouterr().err
    assert "sample image failed, training goes on" in err and "p.txt:2 at step 2: RuntimeError: CUDA out" in err
    assert (run_dir / "sample" / "tiny_000002_00_7.png").is_file()
    assert not (run_dir / "sample" / "tiny_e000001_00_7.png").exists()
    monkeypatch.setattr(sampling, "generate_images", real)
    result = run(cfg, resume=True, quiet=True)  # the interrupted sampling is drawn again, then the export
    assert (run_dir / "sample" / "tiny_e000001_00_7.png").is_file() and (run_dir / "tiny.safetensors").is_file()
    assert (run_dir / "sample" / "tiny_sheet_e000001.png").is_file()
    assert result.summary["steps"] == 4 and len(result.summary["sample_errors"]) == 1
    assert json.loads((run_dir / "summary.json").read_text())["sample_errors"][0].startswith(f"{tmp_path / 'p.txt'}:2")


def test_training_samples_with_a1111_prompt_syntax_equal_generate_images(tmp_path, sd1_dir):
    """A sample prompt with prompt editing, alternation and AND is drawn as ``generate_images`` draws it for the
    same prompt and seed: before training on the base model, after step 2 with that step's LoRA file."""
    import numpy as np
    from PIL import Image

    from lorakit.sd.generate import generate_images
    from lorakit.sd.pipeline import load_pipeline

    model, data = sd1_dir
    prompt = "a [red:blue:0.5] [cat|dog] AND sks house:0.7"
    (tmp_path / "p.txt").write_text(f"{prompt} --n green --w 32 --h 32 --s 3 --d 5 --l 6\n")
    cfg = from_dict(sd_pipes.sd_config(tmp_path, model, data, network={"train_unet_only": True},
                                      data={"resolution": 32, "min_bucket_reso": 32, "max_bucket_reso": 64},
                                      sample={"prompts": str(tmp_path / "p.txt"), "before_training": True,
                                              "every_n_steps": 2, "every_n_epochs": None},
                                      train={"max_steps": 2, "save_every_n_steps": 2, "save_every_n_epochs": None,
                                             "lr": 1e-2}))
    run(cfg, quiet=True)
    sample = tmp_path / "run" / "sample"
    pipe = load_pipeline(str(model))[0]
    kwargs = {"width": 32, "height": 32, "steps": 3, "seed": 5, "cfg_scale": 6}
    before = np.asarray(generate_images(pipe, prompt, "green", **kwargs)[0])
    after = np.asarray(generate_images(pipe, prompt, "green", loras=[tmp_path / "run" / "tiny.safetensors"],
                                       **kwargs)[0])
    got_before, got_after = (np.asarray(Image.open(sample / f"tiny_{n}_00_5.png")) for n in ("e000000", "000002"))
    assert (got_before == before).all() and (got_after == after).all()
    assert (got_after != before).any()  # the LoRA of step 2 is live in the second sample
