"""``lorakit sd generate|grid`` end to end on a saved tiny pipeline: PNGs with infotext, no overwrites, the
native size, errors on stderr in one line, and a failed grid that leaves nothing behind."""

import os
import shutil

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
FAST = ["--size", "32x32", "--steps", "2", "--device", "cpu"]


def _run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    res.text = " ".join(res.output.split())
    return res


def _refused(res, *parts):
    """Exit 1, nothing on stdout, and the error as the last line of stderr (after diffusers' loading bar)."""
    assert res.exit_code == 1, res.output
    error = res.stderr[res.stderr.rfind("error: "):]
    assert res.stdout == "" and error.startswith("error: "), (res.stdout, res.stderr)
    for part in parts:
        assert part in " ".join(error.split()), (part, error)
    return error


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


def test_errors_are_explained_on_stderr(model, tmp_path):
    """Before: sd generate and sd grid printed their errors on stdout."""
    path, loras = model
    _refused(_run("sd", "grid", path, "a red cat", "--x", "Prompt S/R: blue, green", "-o", tmp_path / "g.png", *FAST),
             "'blue' is not in the prompt")
    _refused(_run("sd", "generate", path, "a cat <lora:catEar:1>", "--lora-dir", loras, "-o", tmp_path, *FAST),
             "unknown LoRA 'catEar'", "Closest: catEars")
    _refused(_run("sd", "generate", path, "a (cat:1.2.3)", "-o", tmp_path, *FAST), "at character 8")
    _refused(_run("sd", "generate", path, "a <lora:x:0.5", "-o", tmp_path, *FAST), "not closed", "a <lora:x:0.5")
    _refused(_run("sd", "generate", tmp_path / "missing", "a cat", "-o", tmp_path, *FAST), "does not exist")
    shutil.copy(loras / "catEars.safetensors", tmp_path / "secret.safetensors")
    escape = os.path.relpath(tmp_path / "secret", loras)  # ../../<tmp>/secret
    _refused(_run("sd", "generate", path, f"a cat <lora:{escape}:1>", "--lora-dir", loras, "-o", tmp_path / "o",
                  *FAST), "outside the LoRA directory")


@pytest.mark.parametrize(("args", "parts"), [
    (["--cfg", "nan"], ["--cfg nan: the CFG scale must be a finite number"]),
    (["--cfg", "inf"], ["--cfg inf"]),
    (["--clip-skip", "10"], ["clip_skip=10", "Clip skip 1 (last layer) to 3"]),
    (["--device", "gpu"], ["--device 'gpu': expected one of auto, cpu, cuda"]),
])
def test_bad_options_are_one_line_errors(model, tmp_path, args, parts):
    """Before: --cfg nan ran unguided and wrote "CFG scale: nan"; --clip-skip 10 and --device gpu crashed."""
    path, _ = model
    res = _run("sd", "generate", path, "a cat", "-o", tmp_path / "out", *FAST, *args)
    assert "\n" not in _refused(res, *parts).strip() and not (tmp_path / "out").exists()


def test_a_lora_file_as_the_model_is_explained(model, tmp_path):
    _, loras = model
    _refused(_run("sd", "generate", loras / "catEars.safetensors", "a cat", "-o", tmp_path, *FAST),
             "catEars.safetensors is a LoRA file, not a model", "<lora:catEars:1>", f"--lora-dir {loras}")


def test_size_defaults_to_the_native_size_and_other_tags_warn(model, tmp_path):
    path, _ = model
    res = _run("sd", "generate", path, "a cat <hypernet:x:1>", "--steps", "1", "--device", "cpu", "-o", tmp_path)
    assert res.exit_code == 0, res.output
    assert "warning: <hypernet:x:1>: lorakit applies only" in " ".join(res.stderr.split())
    image = Image.open(next(tmp_path.iterdir()))
    assert image.size == (32, 32) and parse_infotext(image.info["parameters"])["Size-1"] == "32"


def test_a_failed_grid_leaves_nothing_behind(model, tmp_path):
    """Before: the cells made before the failing one stayed in grid-cells/."""
    path, loras = model
    out = tmp_path / "grid.png"
    res = _run("sd", "grid", path, "a cat <lora:catEars:1>", "--x", "LoRA file: catEars, nope", "--lora-dir", loras,
               "-o", out, *FAST)
    _refused(res, "unknown LoRA 'nope'")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "grid-cells").mkdir()  # the cells of an earlier grid are part of its output: kept ...
    (tmp_path / "grid-cells" / "00000-cell0-0-0.png").write_bytes(b"earlier run")
    args = ["sd", "grid", path, "a cat", "--x", "Seed: 1-2", "-o", out, *FAST]
    _refused(_run(*args), "grid-cells exists; pass --overwrite")
    res = _run(*args, "--overwrite")  # ... unless the grid is overwritten
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "grid-cells").iterdir()) == ["00000-cell0-0-0.png",
                                                                          "00001-cell1-0-0.png"]
    assert (tmp_path / "grid-cells" / "00000-cell0-0-0.png").read_bytes() != b"earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid-cells", "grid.png"]



SYNTAX = "a [red:blue:0.5] [cat|dog] AND sks house:0.7"  # prompt editing, alternation, composable AND


def test_grid_cells_with_a1111_prompt_syntax_equal_generate_images(model, tmp_path):
    """Each cell of ``sd grid`` (a Prompt S/R axis editing inside the brackets) is the image ``generate_images``
    gives for the cell's prompt and seed, and the syntax took effect (the cell differs from the plain prompt)."""
    import numpy as np

    from lorakit.sd.generate import generate_images
    from lorakit.sd.pipeline import load_pipeline

    path, _ = model
    out = tmp_path / "grid.png"
    res = _run("sd", "grid", path, SYNTAX, "--x", "Prompt S/R: blue, green", "--seed", 3, "--steps", 3, "-o", out,
               "--size", "32x32", "--device", "cpu")
    assert res.exit_code == 0, res.text
    cells = {p.name[6:-4]: np.asarray(Image.open(p)) for p in (tmp_path / "grid-cells").iterdir()}
    assert sorted(cells) == ["cell0-0-0", "cell1-0-0"]
    pipe = load_pipeline(str(path))[0]
    for ix, colour in enumerate(["blue", "green"]):
        prompt = SYNTAX.replace("blue", colour)
        want = generate_images(pipe, prompt, width=32, height=32, steps=3, seed=3)[0]
        assert (cells[f"cell{ix}-0-0"] == np.asarray(want)).all(), prompt
        assert parse_infotext(want.info["parameters"])["Prompt"] == prompt
    plain = generate_images(pipe, "a blue cat", width=32, height=32, steps=3, seed=3)[0]
    assert not (cells["cell0-0-0"] == np.asarray(plain)).all()
