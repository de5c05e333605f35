"""The seam between the shared training machinery and a task (text, diffusion, ...).

``lorakit.train.run`` does what every task shares (devices, DDP, the loop, checkpoints, resume,
metrics, plots, summary); a task supplies the rest through this small protocol, in this order::

    cfg    = task.parse_config(data, check_paths)     # typed sections, every error at once
    problems, report = task.validate(data)            # lorakit validate: config + data, no training
    parts  = task.build(cfg, device)                  # Parts: the trainable root + frozen helpers
    data   = task.data(cfg, parts, rank, world)       # after build: caches may use the frozen parts
    groups = task.param_groups(parts, cfg)            # optimizer groups (per-part lrs, LoRA+ ...)
    loss, counts = task.loss(model, batch)            # counts: {"samples": n, "tokens": m}
    task.callbacks(cfg, parts, data)                  # evaluation, samples, periodic exports
    path   = task.export(parts, cfg, run_dir, state)  # PEFT dir, kohya .safetensors, ...

A third task is a folder under ``lorakit/tasks/`` and a line in ``TASKS``; ``train/`` is not edited.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..config import ConfigError

#: ``task:`` value in a run config -> "module:attribute" of its Task object (imported on use)
TASKS = {"text": "lorakit.tasks.text.task:TASK", "diffusion": "lorakit.tasks.diffusion.task:TASK"}


@dataclass
class Parts:
    """What ``build`` returns. ``model`` is the module the loop trains (its parameters with
    ``requires_grad`` are the checkpointed ones); ``train_modules`` are put in train mode by the loop
    (everything else stays in eval mode: a frozen VAE or text encoder never switches to dropout)."""

    model: nn.Module
    train_modules: list[nn.Module] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    """Task-private objects (tokenizer, VAE, scheduler, labels ...). Two keys are read by ``run`` under FSDP
    (which builds in CPU memory and shards ``model`` onto the device): ``helpers``, the frozen modules outside
    ``model`` to move to the device afterwards (a VAE), and ``fsdp_policy``, a ``module -> bool`` choosing
    the FSDP units (default: the model's ``_no_split_modules`` or ``train.fsdp_wrap``)."""


class StepData(Protocol):
    """Deterministic micro-batches: ``len`` per epoch for this rank; ``epoch(e, offset)`` yields dicts."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start: int = 0): ...


class Task(Protocol):
    name: str

    def parse_config(self, data: dict, check_paths: bool = True) -> Any: ...

    def validate(self, data: dict) -> tuple[list[str], str]:
        """(every problem, a report) for ``lorakit validate``: config and data checked without training."""

    def build(self, cfg, device: torch.device) -> Parts: ...

    def data(self, cfg, parts: Parts, rank: int, world: int) -> StepData: ...

    def step_plan(self, cfg, data: StepData, world: int) -> tuple[int, int, str]:
        """(steps per epoch, total steps, a one-line explanation)."""

    def param_groups(self, parts: Parts, cfg) -> list[dict]: ...

    def make_optimizer(self, groups: list[dict], cfg, device: torch.device) -> torch.optim.Optimizer: ...

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, int]]: ...

    def callbacks(self, cfg, parts: Parts, data: StepData, device: torch.device) -> list: ...

    def export(self, parts: Parts, cfg, run_dir, state) -> Any: ...

    def summary(self, parts: Parts, cfg, device: torch.device) -> dict: ...


def get_task(name: str | None) -> Task:
    """The Task registered as ``name`` (``None``: text)."""
    name = "text" if name is None else name
    if name not in TASKS:
        raise ConfigError([f"task={name!r}: unknown task; expected one of {sorted(TASKS)} (absent means text)."])
    module, _, attr = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
