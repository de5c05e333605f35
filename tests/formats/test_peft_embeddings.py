"""PEFT's default save of an adapter on ``embed_tokens``/``lm_head`` (``save_embedding_layers="auto"``)
also holds the base embedding (``...embed_tokens.base_layer.weight``): lorakit loads it as PEFT does,
PEFT's own load of the same directory being the oracle."""

from __future__ import annotations

import copy
import warnings

import peft
import pytest
import torch
from models import build, example_input, run
from safetensors.torch import load_file

import lorakit


def _peft_save(base, targets, tmp_path, change_base: bool = False):
    pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                                 init_lora_weights=False))
    if change_base:  # e.g. an embedding trained or edited before the adapter: the saved copy differs
        with torch.no_grad():
            pm.get_input_embeddings().base_layer.weight.add_(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT announces "Setting save_embedding_layers to True"
        pm.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("targets", [["q_proj", "embed_tokens"], ["v_proj", "lm_head"],
                                     ["embed_tokens", "lm_head", "o_proj"]])
def test_peft_save_with_embedding_layers_loads_like_peft(tmp_path, targets):
    base = build("llama")
    path = _peft_save(base, targets, tmp_path)
    copies = [k for k in load_file(path / "adapter_model.safetensors") if k.endswith("base_layer.weight")]
    assert copies, "PEFT did not save the base embedding: this test would check nothing"
    x = example_input("llama")
    expected = run(peft.PeftModel.from_pretrained(copy.deepcopy(base), path), "llama", x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the copy equals the model's embedding: nothing to warn about
        model = lorakit.load_adapter(copy.deepcopy(base), path)
    torch.testing.assert_close(run(model, "llama", x), expected, atol=1e-5, rtol=1e-5)


def test_a_different_base_embedding_in_the_file_is_loaded_as_peft_does(tmp_path):
    base = build("llama")
    path = _peft_save(base, ["q_proj", "embed_tokens"], tmp_path, change_base=True)
    x = example_input("llama")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), path)
    expected = run(theirs, "llama", x)
    with pytest.warns(UserWarning, match="copy of the base embedding differs.*loaded into the model as PEFT does"):
        model = lorakit.load_adapter(copy.deepcopy(base), path)
    torch.testing.assert_close(run(model, "llama", x), expected, atol=1e-5, rtol=1e-5)
    saved = load_file(path / "adapter_model.safetensors")["base_model.model.model.embed_tokens.base_layer.weight"]
    torch.testing.assert_close(model.get_input_embeddings().base_layer.weight, saved)
    with lorakit.disable_adapters(model):  # PEFT's base model changed too
        with theirs.disable_adapter():
            torch.testing.assert_close(run(model, "llama", x), run(theirs, "llama", x), atol=1e-5, rtol=1e-5)


def test_a_base_embedding_of_another_shape_is_refused_unchanged(tmp_path):
    base = build("llama")
    path = _peft_save(base, ["q_proj", "embed_tokens"], tmp_path)
    tensors = load_file(path / "adapter_model.safetensors")
    key = "base_model.model.model.embed_tokens.base_layer.weight"
    tensors[key] = torch.zeros(65, tensors[key].shape[1])  # a resized vocabulary
    from safetensors.torch import save_file

    save_file(tensors, path / "adapter_model.safetensors")
    model = copy.deepcopy(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="shape mismatch for base_model.model.model.embed_tokens.base_layer.weight"):
        lorakit.load_adapter(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
