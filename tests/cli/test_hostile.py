"""Hostile input for every command: each case must end with exit code != 0, one message on stderr
naming the culprit, no traceback, and no file written (the directory tree is unchanged)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from lorakit.cli import (
    app,
    commands,  # noqa: F401  (registers the commands)
)
from lorakit.formats import kohya
from lorakit.formats.peft_sd import write_peft

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
from lora_files import lora_file  # noqa: E402

runner = CliRunner()
KEY = "lora_unet_mid_block_attentions_0_proj_in"


def _tree(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


def hostile(root: Path, args: list, *culprits: str, code: int = 1, prefix: list | None = None):
    """Run ``lorakit ARGS`` (in this process, or in a fresh one after the command ``prefix``); check the contract
    and that every culprit string is in the message."""
    before = _tree(root)
    args = [str(a) for a in args]
    if prefix is None:
        res = runner.invoke(app, args)
        exit_code, stdout, stderr = res.exit_code, res.stdout, res.stderr
    else:
        res = subprocess.run([*prefix, sys.executable, "-m", "lorakit", *args], capture_output=True, text=True,
                             timeout=300)
        exit_code, stdout, stderr = res.returncode, res.stdout, res.stderr
    err = " ".join(stderr.split())
    assert exit_code == code, (args, stdout, stderr)
    assert "Traceback" not in stdout and "Traceback" not in stderr
    assert err.startswith("error:") and not stdout.strip(), (stdout, stderr)
    for c in culprits:
        assert c in err, f"{c!r} not in: {err}"
    assert _tree(root) == before, "a file was written or changed from bad input"
    return err


def kohya_file(path: Path, edit=None) -> Path:
    sd = kohya.to_state_dict(lora_file(1))
    if edit:
        edit(sd)
    save_file(sd, path)
    return path


@pytest.fixture
def good(tmp_path):
    return kohya_file(tmp_path / "good.safetensors")


def test_missing_corrupt_and_inconsistent_lora_files(tmp_path, good):
    out = tmp_path / "out.safetensors"
    hostile(tmp_path, ["inspect", tmp_path / "nope.safetensors"], "nope.safetensors")
    (tmp_path / "trunc.safetensors").write_bytes(good.read_bytes()[:200])
    hostile(tmp_path, ["inspect", tmp_path / "trunc.safetensors"], "trunc.safetensors", "truncated")
    (tmp_path / "text.safetensors").write_text("hello")
    hostile(tmp_path, ["resize", tmp_path / "text.safetensors", "-o", out, "--rank", "1"], "text.safetensors")

    def ranks(sd):
        sd[f"{KEY}.lora_up.weight"] = sd[f"{KEY}.lora_up.weight"][:, :2].contiguous()
    bad = kohya_file(tmp_path / "ranks.safetensors", ranks)
    for args in (["inspect", bad], ["resize", bad, "-o", out, "--rank", "1"],
                 ["merge-loras", bad, good, "-o", out], ["convert", bad, out, "--to", "kohya"]):
        hostile(tmp_path, args, "ranks.safetensors", "lora_up.weight rank 2", "lora_down.weight rank 3")
    nan = kohya_file(tmp_path / "nan.safetensors", lambda sd: sd[f"{KEY}.lora_down.weight"].__setitem__(0, float("nan")))
    hostile(tmp_path, ["resize", nan, "-o", out, "--rank", "1"], "nan.safetensors", "NaN/Inf", KEY.split("_")[-1])
    hostile(tmp_path, ["merge-loras", nan, good, "-o", out, "--method", "svd", "--rank", "2"], "nan.safetensors")
    vec = kohya_file(tmp_path / "vec.safetensors", lambda sd: sd.__setitem__(f"{KEY}.alpha", torch.ones(3)))
    hostile(tmp_path, ["inspect", vec], "vec.safetensors", "alpha", "one number")
    alone = kohya_file(tmp_path / "alone.safetensors", lambda sd: sd.pop(f"{KEY}.lora_up.weight"))
    hostile(tmp_path, ["convert", alone, out, "--to", "kohya"], "alone.safetensors", "lora_down.weight", "no lora_up")
    other = kohya_file(tmp_path / "llm.safetensors", lambda sd: sd.update(
        {"lora_unet_model_layers_0_q_proj.lora_down.weight": torch.ones(1, 4),
         "lora_unet_model_layers_0_q_proj.lora_up.weight": torch.ones(4, 1)}))
    hostile(tmp_path, ["inspect", other], "llm.safetensors", "unet.model.layers.0.q_proj")
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x02}q\x00.")
    hostile(tmp_path, ["inspect", tmp_path / "model.ckpt"], "model.ckpt", "pickle")


@pytest.mark.parametrize("config, culprits", [
    ("[1, 2]", ["adapter_config.json", "a list", "JSON object"]),
    ('{"peft_type": "LORA", "r": "8"}', ["adapter_config.json", "r:", "'8'", "positive integer"]),
    ('{"peft_type": "LORA",\n "r": 8,, }', ["adapter_config.json", "line 2 column"]),
    (b'{"peft_type": "LORA", "r": 8\n, "x": "\xff"}', ["adapter_config.json", "line 2", "UTF-8"]),
    ('{"peft_type": "LORA", "r": 8, "lora_alpha": 8, "alpha_pattern": {"(": 2}}', ["alpha_pattern key '('"]),
])
def test_bad_adapter_config_json(tmp_path, config, culprits):
    write_peft(lora_file(1), tmp_path / "peft")
    f = tmp_path / "peft" / "unet" / "adapter_config.json"
    f.write_bytes(config if isinstance(config, bytes) else config.encode())
    hostile(tmp_path, ["convert", tmp_path / "peft", tmp_path / "o.safetensors", "--to", "kohya"], *culprits)
    hostile(tmp_path, ["predict", "base", "hi", "--adapter", tmp_path / "peft" / "unet"], *culprits)


def test_output_paths_are_checked_before_any_work(tmp_path, good):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "exists.safetensors").write_bytes(b"keep me")
    hostile(tmp_path, ["resize", good, "-o", tmp_path / "adir", "--rank", "1"], "adir", "existing directory")
    hostile(tmp_path, ["resize", good, "-o", tmp_path / "exists.safetensors", "--rank", "1"], "already exists",
            "--overwrite")
    hostile(tmp_path, ["extract", good, good, "-o", tmp_path / "afile" / "x.safetensors"], "afile", "is a file")
    hostile(tmp_path, ["convert", good, tmp_path / "afile", "--to", "peft"], "afile", "existing file")
    hostile(tmp_path, ["convert", good, good, "--to", "kohya"], "good.safetensors", "one of the inputs")
    hostile(tmp_path, ["convert", good, tmp_path / "x", "--to", "onnx"], "onnx", "kohya")
    hostile(tmp_path, ["merge", "base", tmp_path / "adir", "-o", tmp_path / "afile"], "afile")
    res = runner.invoke(app, ["resize", str(good), "-o", str(tmp_path / "exists.safetensors"), "--rank", "1",
                              "--overwrite"])
    assert res.exit_code == 0 and (tmp_path / "exists.safetensors").read_bytes() != b"keep me"


DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def test_read_only_output_location(tmp_path, good):
    """A directory the user cannot write: refused before any work. Root writes anywhere through its
    CAP_DAC_OVERRIDE, so under root the command runs in a fresh interpreter without it (util-linux's setpriv)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        hostile(tmp_path, ["resize", good, "-o", ro / "o.safetensors", "--rank", "1"], "ro", "not writable",
                prefix=DROP_DAC if os.geteuid() == 0 else None)
    finally:
        ro.chmod(0o700)


def _config(tmp_path, llama_path, **sections) -> Path:
    (tmp_path / "t.txt").write_text("the cat sat")
    data = {"model": {"path": str(llama_path)}, "data": {"train": str(tmp_path / "t.txt")},
            "lora": {"r": 2}, "train": {"output_dir": str(tmp_path / "run"), "batch_size": 1}}
    for name, values in sections.items():
        data[name].update(values)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data).replace("__no__", "no"))  # `no` unquoted on purpose: YAML reads False
    return path


@pytest.mark.parametrize("section, values, culprits", [
    ("model", {"device": "gpu"}, ["model.device='gpu'", "cpu"]),
    ("data", {"prompt_template": "{question} {prompt}"}, ["data.prompt_template", "{question}"]),
    ("train", {"lr": float("nan")}, ["train.lr=nan", "finite"]),
    ("train", {"output_dir": "FILE"}, ["train.output_dir", "is a file"]),
    ("lora", {"alpha": float("inf")}, ["lora.alpha=inf"]),
    ("train", {"mixed_precision": "gpu16"}, ["train.mixed_precision"]),
])
def test_validate_rejects_what_train_would(tmp_path, llama_path, section, values, culprits):
    (tmp_path / "FILE").write_text("x")
    values = {k: str(tmp_path / "FILE") if v == "FILE" else v for k, v in values.items()}
    cfg = _config(tmp_path, llama_path, **{section: values})
    hostile(tmp_path, ["validate", cfg], *culprits)
    hostile(tmp_path, ["train", cfg], *culprits)


def test_yaml_no_in_an_enum_field_and_non_utf8_configs(tmp_path, llama_path):
    cfg = _config(tmp_path, llama_path, train={"mixed_precision": "__no__"})
    res = runner.invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 0, res.output
    cfg.write_bytes(b"model: {path: x}\n# caf\xe9\n")
    hostile(tmp_path, ["validate", cfg], "c.yaml", "line 2", "UTF-8")


def test_cuda_device_without_cuda(tmp_path, llama_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    hostile(tmp_path, ["validate", _config(tmp_path, llama_path, model={"device": "cuda"})], "no CUDA device")


def test_predict_and_generate_with_missing_corrupt_or_wrong_task_adapters(tmp_path):
    hostile(tmp_path, ["predict", "base", "hi", "--adapter", tmp_path / "gone"], "gone", "not found")
    write_peft(lora_file(1), tmp_path / "peft")
    ad = tmp_path / "peft" / "unet"
    (ad / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}    ")
    hostile(tmp_path, ["generate", "base", "hi", "--adapter", ad], "adapter_model.safetensors")
    write_peft(lora_file(1), tmp_path / "ok")
    ok = tmp_path / "ok" / "unet"
    hostile(tmp_path, ["predict", "base", "hi", "--adapter", ok], "unet", "not a classification adapter")
    (ok / "labels.json").write_text('["a", "b"]')
    hostile(tmp_path, ["generate", "base", "hi", "--adapter", ok], "unet", "classification adapter", "predict")
    (ok / "labels.json").write_text('{"a": 1}')
    hostile(tmp_path, ["predict", "base", "hi", "--adapter", ok], "labels.json", "list of label names")


def test_internal_errors_print_one_line_and_debug_shows_the_traceback(tmp_path, good, monkeypatch):
    import lorakit.cli.files as files

    def boom(*a, **k):
        raise TypeError("unexpected thing")
    monkeypatch.setattr(files, "inspect_lora", boom)
    err = hostile(tmp_path, ["inspect", good], "internal error", "TypeError", "--debug", code=2)
    assert len(err) < 300
    res = runner.invoke(app, ["--debug", "inspect", str(good)])
    assert isinstance(res.exception, TypeError)


@pytest.mark.parametrize("args, culprits", [
    (["resize", "G", "-o", "O", "--rank", "0"], ["rank=0", "positive integer"]),
    (["resize", "G", "-o", "O", "--dynamic", "sv_fro", "--param", "nan"], ["sv_fro parameter nan"]),
    (["resize", "G", "-o", "O", "--dynamic", "sv_ratio", "--param", "0.5"], ["sv_ratio parameter 0.5"]),
    (["merge-loras", "G", "G", "-o", "O", "--method", "svd", "--rank", "-2"], ["rank=-2"]),
    (["merge-loras", "G", "G", "-o", "O", "--weights", "nan,1"], ["weights", "finite"]),
    (["merge-loras", "G", "-o", "O", "--block-weight", "unet=1"], ["--block-weight", "--base"]),
    (["extract", "G", "G", "-o", "O", "--rank", "2"], ["no module", "nothing was written"]),
    (["extract", "G", "G", "-o", "O", "--clamp-quantile", "0"], ["clamp_quantile=0"]),
])
def test_bad_numbers_in_options(tmp_path, good, args, culprits):
    args = [good if a == "G" else tmp_path / "o.safetensors" if a == "O" else a for a in args]
    hostile(tmp_path, args, *culprits)


def test_quickstart_configs_and_outputs(tmp_path):
    from lorakit.tasks.text.quickstart import DEFAULT_CONFIG

    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["quickstart"]["test_fraction"] = 2
    data["quickstart"]["methods"]["lora"]["train"]["lr"] = float("nan")
    data["quickstart"]["methods"]["full"]["train"]["method"] = "half"
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(data))
    for cmd in (["validate", tmp_path / "q.yaml"], ["quickstart", "-c", tmp_path / "q.yaml", "-o", tmp_path / "qs"]):
        hostile(tmp_path, cmd, "quickstart.test_fraction=2", "train.lr=nan", "(method full) train.method='half'")
    (tmp_path / "qs").mkdir()
    (tmp_path / "qs" / "results.json").write_text("{}")
    hostile(tmp_path, ["quickstart", "-o", tmp_path / "qs"], "results.json", "--overwrite")


def test_data_file_that_is_not_utf8(tmp_path, llama_path):
    cfg = _config(tmp_path, llama_path)
    (tmp_path / "t.txt").write_bytes(b"the cat\nsat \xff on\n")
    for cmd in ("validate", "train"):
        hostile(tmp_path, [cmd, cfg], "t.txt", "line 2", "not UTF-8")


def test_inspect_json_stays_valid_json_with_nan_factors(tmp_path):
    nan = kohya_file(tmp_path / "nan.safetensors", lambda sd: sd[f"{KEY}.lora_down.weight"].__setitem__(0, float("nan")))
    res = runner.invoke(app, ["inspect", str(nan), "--json", "--modules"])
    data = json.loads(res.stdout)  # NaN is not JSON: it comes out as null
    assert res.exit_code == 0 and None in [m["norm"] for m in data["module_list"]] and data["warnings"]


@pytest.mark.parametrize("section, values, culprits", [
    ("lora", {"target_modules": ["qkv"]}, ["lora: target_modules=['qkv'] matched no module", "q_proj"]),
    ("lora", {"exclude_modules": ".*"}, ["matched no module"]),
    ("train", {"method": "head", "head_modules": ["classifier"]}, ["train.head_modules=['classifier']", "lm_head"]),
])
def test_selections_that_match_nothing_in_the_model(tmp_path, llama_path, section, values, culprits):
    cfg = _config(tmp_path, llama_path, **{section: values})
    for cmd in ("validate", "train"):
        assert len(hostile(tmp_path, [cmd, cfg], *culprits)) < 1500
