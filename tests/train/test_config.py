"""--set overrides: any depth, values parsed as YAML, every bad item reported at once."""

import pytest

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
