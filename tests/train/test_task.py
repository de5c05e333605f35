"""The task seam: a tiny fake task (a linear model) runs through the real loop, checkpoints and resume,
registered with one line in ``TASKS`` and no edit to ``lorakit.train``."""

import json
from dataclasses import asdict, dataclass, field

import pytest
import torch
from torch import nn

from lorakit.config import ConfigError
from lorakit.train import Callback, run
from lorakit.train import task as task_module
from lorakit.train.config import TrainArgs, from_dict, parse_section
from lorakit.train.optim import make_optimizer
from lorakit.train.task import Parts


@dataclass
class FakeModel:
    device: str = "cpu"
    frozen_dropout: float = 0.5


@dataclass
class FakeConfig:
    model: FakeModel
    train: TrainArgs = field(default_factory=TrainArgs)
    task = "fake"

    def to_dict(self) -> dict:
        return {"task": "fake", "model": asdict(self.model), "train": asdict(self.train)}


class Points:
    """y = x @ w_true, 64 points; epoch e is a permutation seeded by e (resume needs no loader state)."""

    def __init__(self, batch: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.batch = batch

    def __len__(self):
        return 64 // self.batch

    def epoch(self, epoch: int, start: int = 0):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
        for b in range(start, len(self)):
            idx = order[b * self.batch:(b + 1) * self.batch]
            yield {"x": self.x[idx], "y": self.y[idx], "note": "non-tensor values pass through"}


class Net(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.frozen = nn.Dropout(dropout)  # a frozen part: must stay in eval mode
        self.linear = nn.Linear(4, 1)

    def forward(self, batch):
        assert not self.frozen.training and self.linear.training
        assert batch["note"].startswith("non-tensor")
        return nn.functional.mse_loss(self.linear(self.frozen(batch["x"])), batch["y"])


class FakeTask:
    name = "fake"

    def parse_config(self, data, check_paths=True):
        errors = []
        cfg = FakeConfig(parse_section("model", FakeModel, data.get("model"), errors),
                         parse_section("train", TrainArgs, data.get("train"), errors))
        if errors:
            raise ConfigError(errors, "fake config")
        return cfg

    def build(self, cfg, device):
        torch.manual_seed(0)
        net = Net(cfg.model.frozen_dropout).to(device)
        return Parts(net, [net.linear])

    def data(self, cfg, parts, rank, world):
        return Points(cfg.train.batch_size)

    def step_plan(self, cfg, data, world):
        return len(data), cfg.train.max_steps, "fake plan"

    def param_groups(self, parts, cfg):
        return [{"params": list(parts.model.linear.parameters()), "lr": cfg.train.lr}]

    def make_optimizer(self, groups, cfg, device):
        return make_optimizer(groups, cfg.train, device)

    def loss(self, model, batch):
        return model(batch), {"samples": batch["x"].shape[0]}

    def callbacks(self, cfg, parts, data, device):
        return []

    def export(self, parts, cfg, run_dir, state):
        path = run_dir / "weights.json"
        path.write_text(json.dumps(parts.model.linear.weight.tolist()))
        return path

    def summary(self, parts, cfg, device):
        return {"fake_weight": parts.model.linear.weight.tolist()}


FAKE = FakeTask()


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        state.should_stop |= state.step == self.step


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(task_module.TASKS, "fake", f"{__name__}:FAKE")


def _cfg(tmp_path, name, **train):
    t = {"output_dir": str(tmp_path / name), "max_steps": 24, "batch_size": 8, "lr": 0.3, "scheduler": "linear",
         "progress": False, "plot": False, "log_every": 1, "save_every": 4, "keep_last": 10, **train}
    return from_dict({"task": "fake", "model": {}, "train": t})


def test_fake_task_learns_through_the_real_loop(tmp_path, fake):
    result = run(_cfg(tmp_path, "a"), quiet=True)
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.2 * rows[0]["loss"]
    s = result.summary
    assert s["task"] == "fake" and s["steps"] == 24 and s["samples_per_s"] > 0
    assert json.loads((tmp_path / "a" / "weights.json").read_text()) == s["fake_weight"]
    assert (tmp_path / "a" / "checkpoint-000024" / "trainable.safetensors").is_file()


def test_fake_task_resumes_twice_exactly(tmp_path, fake):
    whole = run(_cfg(tmp_path, "whole"), quiet=True).summary["fake_weight"]
    run(_cfg(tmp_path, "parts"), [StopAt(8)], quiet=True)  # interrupted twice, same schedule
    run(_cfg(tmp_path, "parts"), [StopAt(16)], resume=True, quiet=True)
    resumed = run(_cfg(tmp_path, "parts"), resume=True, quiet=True).summary
    assert resumed["steps"] == 24 and resumed["epochs"] == 3  # counters add up across resumes
    assert torch.equal(torch.tensor(resumed["fake_weight"]), torch.tensor(whole))


def test_unknown_task_and_bad_keys_are_reported(tmp_path, fake):
    with pytest.raises(ConfigError, match="unknown task"):
        from_dict({"task": "audio"})
    with pytest.raises(ConfigError) as exc:
        from_dict({"task": "fake", "model": {"devise": "cpu"}, "train": {"lr": "fast"}})
    text = str(exc.value)
    assert "did you mean model.device" in text and "train.lr" in text
