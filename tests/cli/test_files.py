"""The file-tool commands end to end (typer runner): outputs written, inputs untouched, errors explained."""

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lorakit.cli import (
    app,
    commands,  # noqa: F401  (registers the commands)
)
from lorakit.formats import kohya
from lorakit.formats.sd_io import read_lora

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
from lora_files import delta, lora_file  # noqa: E402

runner = CliRunner()


def _run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    res.text = " ".join(res.output.split())  # rich wraps long lines
    return res


@pytest.fixture
def two(tmp_path):
    paths = []
    for i in (1, 2):
        p = tmp_path / f"l{i}.safetensors"
        kohya.write_kohya(lora_file(i), p)
        paths.append(p)
    return paths


def test_inspect_json(two):
    res = _run("inspect", two[0], "--json", "--modules")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["family"] == "sd1" and data["ranks"] == {"3": 3} and len(data["module_list"]) == 3


def test_merge_resize_convert_and_inputs_untouched(two, tmp_path):
    before = [p.read_bytes() for p in two]
    out = tmp_path / "m.safetensors"
    res = _run("merge-loras", *two, "-o", out, "--method", "cat", "--weights", "0.5,2")
    assert res.exit_code == 0, res.output
    merged, a, b = read_lora(out), read_lora(two[0]), read_lora(two[1])
    key = "unet.mid_block.attentions.0.proj_in"
    torch.testing.assert_close(delta(merged.modules[key]),
                               0.5 * delta(a.modules[key]) + 2 * delta(b.modules[key]), rtol=1e-5, atol=1e-5)
    res = _run("resize", out, "-o", tmp_path / "r.safetensors", "--rank", "2", "--verbose")
    assert res.exit_code == 0 and "rank 6 -> 2" in res.text
    res = _run("convert", two[0], tmp_path / "peft", "--to", "peft")
    assert res.exit_code == 0 and (tmp_path / "peft" / "unet" / "adapter_config.json").is_file()
    assert [p.read_bytes() for p in two] == before


def test_merge_into_base_checkpoint_folder(two, tmp_path):
    from safetensors.torch import load_file, save_file

    base = tmp_path / "base"
    (base / "unet").mkdir(parents=True)
    (base / "text_encoder").mkdir()
    (base / "unet" / "config.json").write_text("{}")
    g = torch.Generator().manual_seed(0)
    save_file({"mid_block.attentions.0.proj_in.weight": torch.randn(12, 10, generator=g), "conv_in.weight": torch.randn(6, 4, 3, 3, generator=g)},
              base / "unet" / "diffusion_pytorch_model.safetensors")
    save_file({"text_model.encoder.layers.0.mlp.fc1.weight": torch.randn(8, 8, generator=g)}, base / "text_encoder" / "model.safetensors")
    out = tmp_path / "merged"
    res = _run("merge-loras", two[0], "--base", base, "-o", out, "--weights", "0.5", "--block-weight", "unet.conv_in=0")
    assert res.exit_code == 0, res.output
    new, old = (load_file(d / "unet" / "diffusion_pytorch_model.safetensors") for d in (out, base))
    lf = read_lora(two[0])
    torch.testing.assert_close(new["mid_block.attentions.0.proj_in.weight"], old["mid_block.attentions.0.proj_in.weight"] + 0.5 * delta(lf.modules["unet.mid_block.attentions.0.proj_in"]))
    assert torch.equal(new["conv_in.weight"], old["conv_in.weight"])
    assert (out / "unet" / "config.json").is_file()


def test_extract_from_two_files(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 12, generator=g)
    change = torch.randn(16, 2, generator=g) @ torch.randn(2, 12, generator=g)
    name = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    save_file({name: w}, tmp_path / "base.safetensors")
    save_file({name: w + change}, tmp_path / "tuned.safetensors")
    res = _run("extract", tmp_path / "base.safetensors", tmp_path / "tuned.safetensors", "-o", tmp_path / "x.safetensors",
               "--rank", "2", "--clamp-quantile", "1")
    assert res.exit_code == 0, res.output
    lf = read_lora(tmp_path / "x.safetensors")
    torch.testing.assert_close(delta(lf.modules["unet." + name[:-7]]), change, rtol=1e-4, atol=1e-4)


def test_errors_exit_nonzero_with_the_reason(two, tmp_path):
    res = _run("merge-loras", *two, "-o", two[0])
    assert res.exit_code == 1 and "is one of the inputs" in res.text
    res = _run("merge-loras", *two, "-o", tmp_path / "x.safetensors", "--method", "svd")
    assert res.exit_code == 1 and "needs a target rank" in res.text
    torch.save({"a": torch.zeros(1)}, tmp_path / "m.ckpt")
    res = _run("inspect", tmp_path / "m.ckpt")
    assert res.exit_code == 1 and "pickle file" in res.text
