"""PEFT directory loading: every bad input is reported clearly, and a failed load changes nothing."""

import copy
import json

import pytest
import torch
from models import build
from safetensors.torch import load_file, save_file

import lorakit


@pytest.fixture
def saved(tmp_path):
    m = lorakit.inject(build("mlp"), lorakit.LoraConfig(r=4, target_modules=["lin0", "lin1"]))
    lorakit.save_adapter(m, tmp_path)
    return tmp_path


def _rewrite(path, fn):
    tensors = load_file(path / "adapter_model.safetensors")
    save_file(fn(tensors), path / "adapter_model.safetensors")


def test_files_written_with_peft_names(saved):
    keys = sorted(load_file(saved / "adapter_model.safetensors"))
    assert keys == ["base_model.model.lin0.lora_A.weight", "base_model.model.lin0.lora_B.weight",
                    "base_model.model.lin1.lora_A.weight", "base_model.model.lin1.lora_B.weight"]
    cfg = json.loads((saved / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["lora_alpha"] == 8 and cfg["init_lora_weights"] is True


def test_missing_unexpected_and_shape_errors_all_reported(saved):
    def corrupt(t):
        t.pop("base_model.model.lin0.lora_A.weight")
        t["base_model.model.lin1.lora_B.weight"] = torch.zeros(20, 5)
        t["base_model.model.nothing.lora_A.weight"] = torch.zeros(1)
        return t
    _rewrite(saved, corrupt)
    model = build("mlp")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError) as err:
        lorakit.load_adapter(model, saved)
    msg = str(err.value)
    assert "3 problems" in msg and "the model was left unchanged" in msg
    assert "missing key base_model.model.lin0.lora_A.weight (expected shape (4, 10))" in msg
    assert "unexpected key base_model.model.nothing.lora_A.weight" in msg
    assert "shape mismatch for base_model.model.lin1.lora_B.weight: file has (20, 5), model expects (20, 4)" in msg
    assert not list(lorakit.lora_layers(model))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_pickle_refused_unless_opted_in(saved):
    tensors = load_file(saved / "adapter_model.safetensors")
    (saved / "adapter_model.safetensors").unlink()
    torch.save(tensors, saved / "adapter_model.bin")
    with pytest.raises(ValueError, match="pickle file .*which lorakit does not read.*weights_only=True"):
        lorakit.load_adapter(build("mlp"), saved)
    model = lorakit.load_adapter(build("mlp"), saved, allow_pickle=True)
    assert len(list(lorakit.lora_layers(model))) == 2


def test_truncated_file_is_a_clean_error(saved):
    f = saved / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        lorakit.load_adapter(build("mlp"), saved)


def test_missing_directory_and_unsupported_config(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="has no adapter_config.json"):
        lorakit.load_adapter(build("mlp"), tmp_path / "nope")
    cfg = json.loads((saved / "adapter_config.json").read_text())
    cfg.update(peft_type="IA3")
    (saved / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(lorakit.ConfigError, match="peft_type='IA3'"):
        lorakit.load_adapter(build("mlp"), saved)


def test_save_is_atomic_and_leaves_no_temp_files(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_loaded_adapter_frozen_by_default(saved):
    m = lorakit.load_adapter(build("mlp"), saved)
    assert lorakit.trainable_parameters(m).trainable == 0
    m2 = lorakit.load_adapter(build("mlp"), saved, trainable=True)
    assert lorakit.trainable_parameters(m2).trainable == 4 * (10 + 20) + 4 * (20 + 20)
