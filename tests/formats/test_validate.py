"""The one LoRA validator and the safe I/O helpers: each defect is found and named; consistent files pass."""

import os

import pytest
import torch

from lorakit.formats._io import atomic_dir, check_output, read_json
from lorakit.formats.errors import LoraFileError, LoraKeyError
from lorakit.formats.lorafile import LoraFile
from lorakit.formats.validate import check_lora, module_problems, name_problems, peft_config_problems


def lora(r_up=4, r_down=4, conv=False):
    up = torch.randn(8, r_up, *([1, 1] if conv else []))
    return {"lora_up.weight": up, "lora_down.weight": torch.randn(r_down, 6, *([3, 3] if conv else [])),
            "alpha": torch.tensor(2.0)}


@pytest.mark.parametrize("module, words", [
    (lora(3, 4), ["lora_up.weight rank 3", "lora_down.weight rank 4"]),
    ({**lora(), "alpha": torch.ones(2)}, ["alpha", "one number"]),
    ({**lora(), "alpha": torch.tensor(float("nan"))}, ["alpha", "finite"]),
    ({"lora_down.weight": torch.randn(4, 6)}, ["no lora_up.weight"]),
    ({**lora(), "hada_w1_a": torch.randn(8, 2)}, ["exactly one adapter kind"]),
    ({"lora_up.weight": torch.randn(8, 0), "lora_down.weight": torch.randn(0, 6)}, ["every dimension >= 1"]),
    ({"hada_w1_a": torch.randn(8, 2), "hada_w1_b": torch.randn(2, 6), "hada_w2_a": torch.randn(8, 2),
      "hada_w2_b": torch.randn(2, 5)}, ["do not multiply"]),
    ({**lora(), "dora_scale": torch.ones(5)}, ["dora_scale", "5 values"]),
])
def test_each_defect_is_named(module, words):
    problems = " ".join(module_problems("unet.conv_in", module))
    assert problems.startswith("unet.conv_in")
    for w in words:
        assert w in problems


def test_consistent_modules_pass():
    lokr = {"lokr_w1": torch.randn(2, 2), "lokr_w2_a": torch.randn(3, 2), "lokr_w2_b": torch.randn(2, 18)}
    for m in (lora(), lora(conv=True), {**lora(), "dora_scale": torch.ones(8)}, lokr, {"diff": torch.randn(3, 3)}):
        assert module_problems("unet.conv_in", m) == []
    lf = LoraFile({"unet.down_blocks.0.attentions.0.proj_in": lora()})
    assert check_lora(lf, "x.safetensors") is lf and lf.path == "x.safetensors"


def test_module_names_from_other_models_are_reported():
    assert name_problems("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k") == []
    assert name_problems("text_encoder.text_model.encoder.layers.11.self_attn.out_proj") == []
    assert "model" in name_problems("unet.model.layers.0.q_proj")[0]
    assert "['double', 'blocks']" in " ".join(name_problems("unet.down_blocks.double.blocks"))
    with pytest.raises(LoraFileError, match="f.safetensors: unet.a.b"):
        check_lora(LoraFile({"unet.a.b": lora()}), "f.safetensors", names=True)


def test_peft_config_types():
    assert peft_config_problems({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q"]}) == []
    bad = " ".join(peft_config_problems({"r": True, "lora_alpha": "16", "target_modules": [1], "rank_pattern": {"(": 2},
                                         "use_dora": "yes", "lora_dropout": float("nan")}))
    for w in ("r: found a boolean", "lora_alpha: found a string", "target_modules", "rank_pattern key '('",
              "use_dora", "lora_dropout: found nan"):
        assert w in bad
    assert "JSON object" in peft_config_problems([1])[0]


def test_key_errors_are_both_types():
    err = LoraKeyError("f", ["k: bad"])
    assert isinstance(err, KeyError) and isinstance(err, ValueError) and str(err) == "f: k: bad"


def test_read_json_names_file_line_and_column(tmp_path):
    (tmp_path / "a.json").write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(LoraFileError, match=r"a.json: line 3 column 3: invalid JSON"):
        read_json(tmp_path / "a.json")
    (tmp_path / "b.json").write_bytes(b'{"a":\n "\xff"}')
    with pytest.raises(LoraFileError, match=r"b.json: line 2: byte 0xff at offset 8 is not UTF-8"):
        read_json(tmp_path / "b.json")


def test_check_output(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    assert check_output(tmp_path / "new.safetensors") == tmp_path / "new.safetensors"
    assert check_output(tmp_path / "f", overwrite=True) == tmp_path / "f"
    assert check_output(tmp_path / "d", kind="dir") == tmp_path / "d"  # empty directory: fine
    for path, kind, exc in ((tmp_path / "d", "file", IsADirectoryError), (tmp_path / "f", "dir", NotADirectoryError),
                            (tmp_path / "f", "file", FileExistsError), (tmp_path / "f" / "x", "file", NotADirectoryError)):
        with pytest.raises(exc, match=str(path.name)):
            check_output(path, kind=kind)
    with pytest.raises(ValueError, match="one of the inputs"):
        check_output(tmp_path / "f", overwrite=True, inputs=[tmp_path / "f"])


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "new").write_text("new")
        raise RuntimeError("crash mid-way")
    assert os.listdir(out) == ["old"] and os.listdir(tmp_path) == ["out"]
    with atomic_dir(out) as tmp:
        (tmp / "new").write_text("new")
    assert os.listdir(out) == ["new"] and os.listdir(tmp_path) == ["out"]


def test_a_module_missing_a_whole_factor_is_named():
    lokr = {"lokr_w2_a": torch.randn(3, 2), "lokr_w2_b": torch.randn(2, 18), "alpha": torch.tensor(1.0)}
    assert "without lokr_w1_a" in module_problems("unet.conv_in", lokr)[0]  # found by `make fuzz`
