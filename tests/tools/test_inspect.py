"""inspect: norms against the dense ΔW, and warnings for untrained or broken modules; PEFT adapters of
text models in PEFT's terms, with PEFT's own delta weights as the oracle."""

import pytest
import torch
from lora_files import delta, lora_file

from lorakit.tools.inspect import inspect_lora


def test_norms_ranks_and_warnings():
    lf = lora_file(0, rank=3, alpha=2.0)
    lf.modules["unet.mid_block.attentions.0.proj_in"]["lora_up.weight"].zero_()
    lf.modules["unet.conv_in"]["lora_down.weight"][0, 0, 0, 0] = float("nan")
    rep = inspect_lora(lf)
    by_key = {m.key: m for m in rep.modules}
    key = "text_encoder.text_model.encoder.layers.0.mlp.fc1"
    assert abs(by_key[key].norm - float(delta(lf.modules[key]).norm())) < 1e-4
    assert by_key[key].rank == 3 and by_key[key].alpha == 2.0 and by_key[key].scale == 2.0 / 3
    assert any("unet.mid_block.attentions.0.proj_in: lora_up is all zeros" in w for w in rep.warnings)
    assert any("unet.conv_in: NaN/Inf" in w for w in rep.warnings)
    assert rep.family == "sd1" and rep.summary()["modules"] == {"unet": 2, "text_encoder": 1}
    assert torch.isnan(torch.tensor(by_key["unet.conv_in"].norm))


def _peft_llama(tmp_path, targets, **kw):
    """A tiny Llama adapter saved by PEFT itself (random factors), and the PEFT model (the oracle)."""
    import warnings

    import peft
    from models import build

    pm = peft.get_peft_model(build("llama"), peft.LoraConfig(target_modules=targets, init_lora_weights=False, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.save_pretrained(tmp_path)
    return pm


def test_peft_adapter_of_a_text_model_in_peft_terms(tmp_path):
    """A PEFT adapter of an LLM is not an SD U-Net file: module paths, lora_A/lora_B, PEFT's scale, and
    the copy of the base embedding PEFT saves with it; ‖ΔW‖ equals PEFT's own delta weight."""
    import peft

    pm = _peft_llama(tmp_path, ["q_proj", "v_proj", "embed_tokens"], r=4, lora_alpha=8, rank_pattern={"v_proj": 2},
                     alpha_pattern={"q_proj": 3.0}, use_rslora=True)
    for target in (tmp_path, tmp_path / "adapter_model.safetensors"):
        rep = inspect_lora(target)
        assert rep.source == "peft" and "lora_A/lora_B" in rep.naming
        assert rep.summary()["modules"] == {"q_proj": 2, "v_proj": 2, "embed_tokens": 1}
        layers = {n.removeprefix("base_model.model."): m for n, m in pm.named_modules()
                  if isinstance(m, peft.tuners.lora.LoraLayer)}
        for info in rep.modules:
            layer = layers[info.key]
            assert info.rank == layer.r["default"] and info.scale == pytest.approx(layer.scaling["default"])
            expected = float(layer.get_delta_weight("default").norm())
            assert info.norm == pytest.approx(expected, rel=1e-4), info.key
        assert [n for n in rep.notes if "model.embed_tokens.base_layer.weight" in n and "copy of the base" in n]
        assert not rep.warnings


def test_untrained_peft_adapter_warns_with_peft_names(tmp_path):
    import peft
    from models import build

    peft.get_peft_model(build("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path)
    rep = inspect_lora(tmp_path)
    assert rep.warnings and all("lora_B is all zeros" in w and "lora_up" not in w for w in rep.warnings)
    assert all(w.startswith("model.layers.") for w in rep.warnings)


def test_inspect_cli_on_a_peft_llm_directory(tmp_path):
    from typer.testing import CliRunner

    from lorakit.cli import (
        app,
        commands,  # noqa: F401  (registers the commands)
    )

    _peft_llama(tmp_path, ["q_proj", "lm_head"], r=4)
    res = CliRunner().invoke(app, ["inspect", str(tmp_path), "--modules"], terminal_width=200)
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "expected a unet module" not in out and "lora_up" not in out
    assert "lm_head.base_layer.weight: a copy of the base model's weight" in out
    assert "PEFT LORA: lora_A/lora_B" in out
    import json

    res = CliRunner().invoke(app, ["inspect", str(tmp_path), "--modules", "--json"])
    data = json.loads(res.stdout)
    assert {m["key"] for m in data["module_list"]} == {"lm_head", "model.layers.0.self_attn.q_proj",
                                                     "model.layers.1.self_attn.q_proj"}
    assert len(data["notes"]) == 1 and data["modules"] == {"lm_head": 1, "q_proj": 2}


def test_convert_and_resize_of_a_peft_llm_directory_say_what_to_do_instead(tmp_path):
    """The file tools read image-model LoRAs; a text model's PEFT adapter is refused naming the model and the
    commands that do take it (it used to list every module as "expected a unet module")."""
    from typer.testing import CliRunner

    from lorakit.cli import app, commands  # noqa: F401  (registers the commands)

    _peft_llama(tmp_path / "ad", ["q_proj"], r=4)
    for args in (["convert", str(tmp_path / "ad"), str(tmp_path / "out.safetensors"), "--to", "kohya"],
                 ["resize", str(tmp_path / "ad"), "-o", str(tmp_path / "small.safetensors"), "--rank", "2"]):
        res = CliRunner().invoke(app, args)
        out = " ".join(res.output.split())
        assert res.exit_code == 1 and "PEFT adapter of a transformers model" in out, out
        assert "expected a unet module" not in out and "lorakit merge BASE DIR" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]
