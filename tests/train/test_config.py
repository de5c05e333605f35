"""--set overrides: any depth, values parsed as YAML, every bad item reported at once."""

import pytest
import yaml

from lorakit.config import ConfigError
from lorakit.train.config import apply_overrides


def test_overrides_reach_any_depth_and_parse_yaml():
    data = {"train": {"lr": 1e-3}, "quickstart": {"methods": {"lora": {"train": {"lr": 1e-2}}}}, "lora": None}
    apply_overrides(data, ["train.lr=3.0e-4", "quickstart.methods.lora.train.lr=3.0e-2",
                           "quickstart.methods.full.train.lr=1.0e-4", "lora.rank_pattern.q_proj=8", "train.plot="])
    assert data["train"] == {"lr": 3e-4, "plot": None}
    assert data["quickstart"]["methods"] == {"lora": {"train": {"lr": 3e-2}}, "full": {"train": {"lr": 1e-4}}}
    assert data["lora"] == {"rank_pattern": {"q_proj": 8}}


def test_bad_overrides_are_all_reported_and_nothing_half_applied_is_hidden():
    data = {"train": {"lr": 1e-3, "lr_groups": 5}}
    with pytest.raises(ConfigError) as err:
        apply_overrides(data, ["lr=1", "train.lr_groups.head=2", "train..lr=3"])
    text = str(err.value)
    assert "--set 'lr=1': expected section.key=value" in text
    assert "train.lr_groups is 5, not a mapping" in text
    assert "--set 'train..lr=3'" in text
    assert data == {"train": {"lr": 1e-3, "lr_groups": 5}}


def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path):
    from lorakit.train.config import load_config, read_yaml

    # YAML 1.1 (PyYAML's default) reads 2e-4 as a string; every config means the number
    assert read_yaml("a: 2e-4\nb: -1E+3\nc: 1_000\nd: '2e-4'\ne: 1e4x") == {
        "a": 2e-4, "b": -1000.0, "c": 1000, "d": "2e-4", "e": "1e4x"}
    assert yaml.safe_load("a: 2e-4") == {"a": "2e-4"}  # the stock loader is left as it was
    (tmp_path / "run.yaml").write_text("model: {path: m}\ndata: {train: t.jsonl}\nlora: {r: 4}\n"
                                       "train: {lr: 2e-4, lr_groups: {classifier: 1e-2}}\n")
    cfg = load_config(tmp_path / "run.yaml", ["train.weight_decay=1e-2"], check_paths=False)
    assert (cfg.train.lr, cfg.train.lr_groups, cfg.train.weight_decay) == (2e-4, {"classifier": 1e-2}, 1e-2)


def test_text_task_refuses_an_adapter_as_the_model_and_absurd_repeats(tmp_path):
    """Issue 19.24 for the text task: a PEFT adapter directory (or LoRA file) given as model.path, repeats that
    would not fit in memory; one line each, from the config alone."""
    import json

    import torch
    from safetensors.torch import save_file

    from lorakit.tasks.text.data import step_plan
    from lorakit.train.config import from_dict

    adapter = tmp_path / "runs" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "llama"}))
    save_file({"base_model.model.q.lora_A.weight": torch.zeros(2, 4)}, tmp_path / "lora.safetensors")
    (tmp_path / "t.txt").write_text("hello")
    for model, expected in ((adapter, "is a PEFT adapter directory (adapter_config.json) for the base model 'llama', "
                                      "not a model"),
                            (tmp_path / "lora.safetensors", "is a LoRA file (it holds 'base_model.model.q.lora_A.weight')")):
        with pytest.raises(ConfigError) as err:
            from_dict({"model": {"path": str(model)}, "data": {"train": str(tmp_path / "t.txt")}, "lora": {"r": 4}})
        assert expected in str(err.value)
    with pytest.raises(ConfigError, match=r"data.repeats=1000000000000: at most 100,000"):
        from_dict({"model": {"path": "m"}, "data": {"train": "t", "repeats": 10**12}, "lora": {"r": 4}},
                  check_paths=False)
    with pytest.raises(ValueError, match="20,000,000 samples per epoch"):
        step_plan(20_000_000, 8, 1, 1, 1.0, None)
