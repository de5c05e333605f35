"""``lorakit sd generate|grid`` end to end on a saved tiny pipeline: PNGs with infotext, no overwrites, errors."""

import pytest
from PIL import Image
from sd_models import random_lora
from typer.testing import CliRunner

from lorakit.cli import (
    app,
    commands,  # noqa: F401  (registers the commands)
)
from lorakit.formats.sd_io import write_lora
from lorakit.sd.infotext import parse_infotext

runner = CliRunner()
FAST = ["--size", "16x16", "--steps", "2", "--device", "cpu"]


def _run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    res.text = " ".join(res.output.split())
    return res


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from sd_pipes import saved, tiny_sd1

    d = tmp_path_factory.mktemp("sd")
    pipe = tiny_sd1()
    (d / "loras").mkdir()
    write_lora(random_lora({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, seed=5),
               d / "loras" / "catEars.safetensors")
    return saved(pipe, d / "model"), d / "loras"


def test_generate_writes_pngs_with_infotext(model, tmp_path):
    path, loras = model
    res = _run("sd", "generate", path, "a (red:1.2) cat <lora:catEars:0.5>", "-n", "dog", "--lora-dir", loras,
               "--seed", 7, "--count", 2, "--sampler", "DPM++ 2M Karras", "-o", tmp_path / "out", *FAST)
    assert res.exit_code == 0, res.text
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == ["00000-7.png", "00001-8.png"]
    info = parse_infotext(Image.open(files[1]).info["parameters"])
    assert info["Prompt"] == "a (red:1.2) cat <lora:catEars:0.5>" and info["Seed"] == "8"
    assert info["Sampler"] == "DPM++ 2M" and info["Schedule type"] == "Karras" and info["Model"] == "model"
    assert "catEars" in info["Lora hashes"]


def test_grid_and_no_overwrite(model, tmp_path):
    path, loras = model
    out = tmp_path / "grid.png"
    args = ["sd", "grid", path, "a red cat <lora:catEars:1>", "--x", "LoRA strength: 0, 0.5", "--y", "Seed: 1-2",
            "--lora-dir", loras, "-o", out, *FAST]
    res = _run(*args)
    assert res.exit_code == 0, res.text
    assert len(list((tmp_path / "grid-cells").iterdir())) == 4
    info = parse_infotext(Image.open(out).info["parameters"])
    assert info["X Type"] == "LoRA strength" and info["Y Values"] == "1-2"
    before = out.read_bytes()
    res = _run(*args[:-len(FAST)], "--size", "24x24")  # refused before the model is even loaded
    assert res.exit_code == 1 and "exists; pass --overwrite" in res.text and out.read_bytes() == before


def test_errors_are_explained(model, tmp_path):
    path, loras = model
    res = _run("sd", "grid", path, "a red cat", "--x", "Prompt S/R: blue, green", "-o", tmp_path / "g.png", *FAST)
    assert res.exit_code == 1 and "'blue' is not in the prompt" in res.text
    res = _run("sd", "generate", path, "a cat <lora:catEar:1>", "--lora-dir", loras, "-o", tmp_path, *FAST)
    assert res.exit_code == 1 and "unknown LoRA 'catEar'" in res.text and "Closest: catEars" in res.text
    res = _run("sd", "generate", path, "a (cat:1.2.3)", "-o", tmp_path, *FAST)
    assert res.exit_code == 1 and "at character 8" in res.text
    res = _run("sd", "generate", tmp_path / "missing", "a cat", "-o", tmp_path, *FAST)
    assert res.exit_code == 1 and "does not exist" in res.text
