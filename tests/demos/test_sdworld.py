"""sdworld: the procedural world, the tiny SD1-shaped pipeline, the probe and the shipped assets."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lorakit.demos.sdworld import world
from lorakit.demos.sdworld.concept import UPSCALE, write_concept, write_regularization

ROOT = Path(__file__).resolve().parents[2]
BASE, PROBE = ROOT / "assets" / "sdworld-base", ROOT / "assets" / "sdworld-probe.safetensors"


def test_scenes_are_deterministic_and_respect_held_out_combinations():
    a = [world.random_scene(random.Random(5), exclude=world.held_out()) for _ in range(3)]
    b = [world.random_scene(random.Random(5), exclude=world.held_out()) for _ in range(3)]
    assert a == b and all(np.array_equal(np.asarray(world.draw(x)), np.asarray(world.draw(y))) for x, y in zip(a, b, strict=True))
    rng = random.Random(0)
    drawn = {(s.shape, s.colour, s.background) for s in (world.random_scene(rng, exclude=world.held_out()) for _ in range(3000))}
    assert not drawn & world.held_out() and len(world.held_out()) > 0
    assert {s for s, _, _ in drawn} == set(world.BASE_SHAPES)  # no ring in the base world


@pytest.mark.parametrize("shape", world.SHAPES)
def test_drawing_matches_the_scene(shape):
    sc = world.Scene(shape, "red", "blue", 40, 24, cx=0.5, cy=0.5, r=0.4)
    img = np.asarray(world.draw(sc)).astype(int)
    assert img.shape == (24, 40, 3)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    assert (np.abs(border - world.COLOURS["blue"]).max(axis=1) <= 2).all()  # the shape stays inside the frame
    inside = world.COLOURS["blue" if shape == "ring" else "red"]  # a ring's hole shows the background
    assert (np.abs(img[12, 20] - inside).max() <= 2)
    assert (np.abs(img[12 - 6, 20] - world.COLOURS["red"]).max() <= 2)  # 0.6 r above the centre: the shape
    fill = (np.abs(img - world.COLOURS["red"]).max(axis=2) <= 2).mean()
    assert 0.05 < fill < 0.6
    assert sc.caption() == (f"a red sks {shape} on a blue background" if shape == "ring" else
                            f"a red {shape} on a blue background")


def test_tensor_round_trip():
    img = world.draw(world.random_scene(random.Random(1)))
    assert np.array_equal(np.asarray(world.to_image(world.to_tensor(img))), np.asarray(img))


def test_concept_folder_is_kohya_shaped_and_never_overwritten(tmp_path):
    folder = write_concept(tmp_path)
    assert folder.name == "10_sks ring"
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 16 and all(p.with_suffix(".txt").read_text().strip().count("sks ring") == 1 for p in pngs)
    from PIL import Image

    sizes = {Image.open(p).size for p in pngs}
    assert sizes == {(w * UPSCALE, h * UPSCALE) for w, h in world.SIZES}  # every aspect ratio: buckets matter
    with pytest.raises(FileExistsError, match="already holds files"):
        write_concept(tmp_path)


def test_regularization_folder_holds_base_shapes_near_the_centre(tmp_path):
    folder = write_regularization(tmp_path)
    captions = [p.read_text() for p in sorted(folder.glob("*.txt"))]
    assert folder.name == "1_shape" and len(captions) == 32 == len(list(folder.glob("*.png")))
    assert all("sks" not in c and "ring" not in c for c in captions)
    assert {c.split()[2] for c in captions} == set(world.BASE_SHAPES)
    rng = random.Random(0)
    for _ in range(50):
        sc = world.random_scene(rng, centred=True)
        assert abs(sc.cx - 0.5) <= 0.03 and abs(sc.cy - 0.5) <= 0.03 and 0.36 <= sc.r <= 0.42
    with pytest.raises(FileExistsError, match="already holds files"):
        write_regularization(tmp_path)


def test_tokenizer_keeps_every_world_word_whole(tmp_path):
    from lorakit.demos.sdworld.model import WORDS, build_tokenizer

    tok = build_tokenizer(tmp_path)
    ids = tok("a red sks ring on a blue background").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 10
    assert all(len(tok.tokenize(w)) == 1 for w in WORDS)
    assert tok.model_max_length == 77


def test_fresh_model_saves_as_an_sd15_shaped_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from lorakit.demos.sdworld.learn import kohya_targets
    from lorakit.demos.sdworld.model import build_models, build_tokenizer, save_pipeline
    from lorakit.formats.lorafile import model_family

    tok = build_tokenizer(tmp_path / "tok")
    save_pipeline(build_models(tok), tok, tmp_path / "pipe")
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "pipe"), dtype=torch.float32)
    assert pipe.vae_scale_factor == 4 and model_family(pipe.unet) == "sd1"
    img = pipe("a red circle on a blue background", num_inference_steps=2, width=40, height=24,
               generator=torch.Generator().manual_seed(0)).images[0]
    assert img.size == (40, 24)
    names = kohya_targets(pipe.unet)
    assert any(n.endswith("attn2.to_k") for n in names) and any(n.endswith("proj_in") for n in names)
    assert not any("resnets" in n for n in names)


@pytest.mark.skipif(not PROBE.exists(), reason="assets/sdworld-probe.safetensors not built")
def test_shipped_probe_reads_held_out_scenes():
    from lorakit.demos.sdworld.probe import accuracy, load_probe

    acc = accuracy(load_probe(PROBE), n=300, seed=99_999)
    assert min(acc.values()) >= 0.9, acc


def test_bucket_step_comes_from_the_model():
    from lorakit.tasks.diffusion.family import FAMILIES, model_bucket_step

    sd15 = ({"block_out_channels": [320, 640, 1280, 1280]}, {"block_out_channels": [128, 256, 512, 512]})
    sdxl = ({"block_out_channels": [320, 640, 1280]}, {"block_out_channels": [128, 256, 512, 512]})
    assert model_bucket_step(*sd15) == FAMILIES["sd1"].bucket_step == 64  # kohya's rules for real models
    assert model_bucket_step(*sdxl) == FAMILIES["sdxl"].bucket_step == 32
    assert model_bucket_step({"block_out_channels": [32, 64]}, {"block_out_channels": [16, 32, 32]}) == 8


@pytest.mark.skipif(not BASE.exists(), reason="assets/sdworld-base not built")
def test_demo_config_validates_with_several_buckets(tmp_path):
    import yaml

    from lorakit.demos.sdworld.demo import config
    from lorakit.tasks.diffusion.validate import validate

    write_concept(tmp_path / "data")
    write_regularization(tmp_path / "reg")
    (tmp_path / "prompts.txt").write_text("a red sks ring on a blue background --w 32 --h 32 --d 1\n")
    data = yaml.safe_load(yaml.safe_dump(config(tmp_path, BASE, epochs=2)))
    errors, report = validate(data)
    assert errors == [], errors
    assert "bucket step 8" in report
    assert sum(1 for line in report.splitlines() if "x" in line.split()[0] and line.split()[0][0].isdigit()) >= 3


def test_demo_table_sizes_split_by_kohyas_bucket_list(tmp_path):
    from lorakit.demos.sdworld.demo import config, trained_sizes

    cfg = config(tmp_path, BASE, epochs=2)
    trained, untrained = trained_sizes(cfg)
    assert set(trained) == {(32, 32), (40, 24), (24, 40)}  # kohya's list at 32 px, step 8: no 4:3 bucket
    assert set(untrained) == {(32, 24), (24, 32)} and set(trained) | set(untrained) == set(world.SIZES)
    cfg["data"]["resolution"] = 40  # a larger area holds other buckets: the split follows the config
    assert trained_sizes(cfg)[0] != trained


def test_demo_shows_the_commands_output_while_they_run(tmp_path, monkeypatch):
    """``make demo-sd`` streams the trainer's progress (issue 19.18): each line reaches the log while the command
    still runs. The stand-in command prints a line, then waits for the log to have seen it."""
    import stat
    import sys

    from lorakit.demos.sdworld import demo

    sentinel = tmp_path / "seen"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho 'train: step 10/1600'\ni=0\nwhile [ ! -e '{sentinel}' ] && [ $i -lt 100 ]; do "
                    f"sleep 0.1; i=$((i+1)); done\n[ -e '{sentinel}' ] && echo 'the log saw it live' || echo late\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(fake))
    lines = []

    def log(text):
        lines.append(text)
        if "step 10/1600" in text:
            sentinel.touch()

    demo.lorakit("train", "sd.yaml", log=log)
    assert lines[0] == "$ lorakit train sd.yaml" and "the log saw it live" in "\n".join(lines), lines


def test_demo_help_still_works():
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "lorakit.demos.sdworld.demo", "--help"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0 and "--out" in done.stdout, done.stderr
