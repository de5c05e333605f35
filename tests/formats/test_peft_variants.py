"""PEFT directory format for variants: DoRA's magnitude key and shapes, the use_dora flag, QLoRA settings."""

import json

import pytest
from models import build
from safetensors.torch import load_file

import lorakit
from lorakit.formats.peft import config_from_peft


def test_dora_magnitude_keys_and_peft_shapes(tmp_path):
    model = lorakit.inject(build("conv"), lorakit.LoraConfig(target_modules=["conv1d", "conv"], r=4, variant="dora"))
    lorakit.inject(model, lorakit.LoraConfig(target_modules=["head"], variant="dora"), "lin")
    lorakit.save_adapter(model, tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert tensors["base_model.model.conv.lora_magnitude_vector"].shape == (1, 8, 1, 1)  # PEFT's conv layout
    assert tensors["base_model.model.conv1d.lora_magnitude_vector"].shape == (1, 8, 1)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["use_dora"] is True
    lorakit.save_adapter(model, tmp_path / "lin", adapter_name="lin")
    assert load_file(tmp_path / "lin" / "adapter_model.safetensors")[
        "base_model.model.head.lora_magnitude_vector"].shape == (2,)


def test_use_dora_selects_the_variant():
    assert config_from_peft({"peft_type": "LORA", "r": 4, "use_dora": True}).variant == "dora"
    assert config_from_peft({"peft_type": "LORA", "r": 4, "use_dora": False}).variant == "lora"


def test_quantisation_settings_round_trip(tmp_path):
    model = lorakit.inject(build("mlp"), lorakit.LoraConfig(target_modules=["lin0"], quantize="nf4",
                                                            compute_dtype="float32", double_quant=True))
    lorakit.save_adapter(model, tmp_path)
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["lorakit_quantization"] == {"quantize": "nf4", "double_quant": True, "compute_dtype": "float32"}
    assert config_from_peft(data).quantize == "nf4"


def test_bad_quantisation_in_a_file_is_reported():
    with pytest.raises(lorakit.ConfigError, match="quantize='int2'"):
        config_from_peft({"peft_type": "LORA", "lorakit_quantization": {"quantize": "int2"}})
