"""The file commands on FLUX.1/SD3 LoRAs: convert, inspect, merge-loras (also into a checkpoint), resize, extract."""

from __future__ import annotations

import json

import torch
from dit_models import delta_2d, flux_transformer, random_dit_lora, reference, split_deltas
from typer.testing import CliRunner

from lorakit.cli import app, commands  # noqa: F401  (registers the commands)
from lorakit.formats.dit_layout import to_fused, to_split
from lorakit.formats.sd_io import read_lora, write_lora

runner = CliRunner()


def _run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    res.text = " ".join(res.output.split())
    return res


def _deltas(lf) -> dict[str, torch.Tensor]:
    """ΔW per diffusers transformer module, whatever the file's layout."""
    if lf.naming.fused:
        return split_deltas(lf, lf.family())
    return {k.split(".", 1)[1]: delta_2d(m) for k, m in lf.modules.items() if k.startswith("transformer.")}


def test_convert_chain_is_lossless_and_inspect_reports_layouts(tmp_path):
    lf = random_dit_lora("sd3", fused=True, seed=1)
    write_lora(lf, tmp_path / "a.safetensors")
    before = (tmp_path / "a.safetensors").read_bytes()
    for src, dst, to in (("a", "b", "peft"), ("b", "c", "comfy"), ("c", "d", "kohya")):
        res = _run("convert", tmp_path / f"{src}.safetensors", tmp_path / f"{dst}.safetensors", "--to", to)
        assert res.exit_code == 0, res.output
    back = read_lora(tmp_path / "d.safetensors")
    assert all(torch.equal(back.modules[k][s], t) for k, m in lf.modules.items() for s, t in m.items())
    assert (tmp_path / "a.safetensors").read_bytes() == before
    res = _run("inspect", tmp_path / "b.safetensors", "--json")
    data = json.loads(res.output)
    assert data["family"] == "sd3" and data["format"] == "peft" and data["fused"] is False
    assert data["to_fused"].startswith("fusing (kohya/comfy) keeps every rank")
    split = random_dit_lora("flux1", fused=False, seed=2)
    write_lora(split, tmp_path / "s.safetensors", to="peft")
    res = _run("convert", tmp_path / "s.safetensors", tmp_path / "s_k.safetensors", "--to", "kohya")
    assert res.exit_code == 0 and "note:" in res.text and "img_attn.qkv: rank 4+4+4 -> 12" in res.text
    data = json.loads(_run("inspect", tmp_path / "s_k.safetensors", "--json").output)
    assert data["ranks_per_part"]["transformer"]["12"] == 2 and data["fused"] is True


def test_merge_loras_across_layouts_and_into_a_checkpoint(tmp_path):
    a, b = random_dit_lora("flux1", fused=True, seed=3), random_dit_lora("flux1", fused=False, seed=4)
    write_lora(a, tmp_path / "a.safetensors")
    write_lora(b, tmp_path / "b.safetensors", to="peft")
    res = _run("merge-loras", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "-o", tmp_path / "m.safetensors",
               "--method", "cat", "--weights", "0.5,2")
    assert res.exit_code == 0, res.output
    merged = read_lora(tmp_path / "m.safetensors")
    assert merged.source == "kohya" and merged.family() == "flux1"
    da, db, dm = _deltas(a), _deltas(b), _deltas(merged)
    for key in da:
        torch.testing.assert_close(dm[key], 0.5 * da[key] + 2 * db[key], rtol=1e-4, atol=1e-5)
    model = flux_transformer()
    model.save_pretrained(tmp_path / "base")
    res = _run("merge-loras", tmp_path / "a.safetensors", "--base", tmp_path / "base", "-o", tmp_path / "merged",
               "--weights", "0.7")
    assert res.exit_code == 0, res.output
    expected = reference({"transformer": model}, a, "flux1", {"transformer": 0.7})["transformer"].state_dict()
    from safetensors.torch import load_file

    (weights,) = (tmp_path / "merged").glob("*.safetensors")
    got = load_file(weights)
    assert all(torch.allclose(got[k], v, atol=1e-5) for k, v in expected.items())


def test_resize_keeps_the_format_and_extract_recovers_a_fused_update(tmp_path):
    lf = random_dit_lora("flux1", fused=False, seed=5)
    write_lora(lf, tmp_path / "p.safetensors", to="peft")
    res = _run("resize", tmp_path / "p.safetensors", "-o", tmp_path / "r.safetensors", "--rank", "2")
    assert res.exit_code == 0, res.output
    small = read_lora(tmp_path / "r.safetensors")
    assert small.source == "peft" and {m["lora_down.weight"].shape[0] for m in small.modules.values()} == {2}
    base = flux_transformer()
    update = random_dit_lora("flux1", fused=True, seed=6, rank=3)
    tuned = reference({"transformer": base}, update, "flux1")["transformer"]
    base.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    res = _run("extract", tmp_path / "base", tmp_path / "tuned", "-o", tmp_path / "x.safetensors", "--rank", "3",
               "--clamp-quantile", "1")
    assert res.exit_code == 0, res.output
    got = read_lora(tmp_path / "x.safetensors")
    assert got.source == "kohya" and got.naming.fused and set(got.modules) == set(update.modules)
    want, have = _deltas(update), _deltas(got)
    for key in want:
        torch.testing.assert_close(have[key], want[key], rtol=1e-3, atol=1e-5)
    assert to_fused(to_split(got))[1] == []  # splitting for diffusers and back keeps the rank
