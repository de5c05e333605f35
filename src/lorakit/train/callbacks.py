"""The callback protocol of lorakit's training loop.

The loop calls, per optimizer step::

    loss = forward(...) + Σ callback.extra_loss(state)      # e.g. AdaLoRA's orthogonality term
    loss.backward()                                          # (repeated for gradient accumulation)
    on_before_optimizer_step(state)                          # grads are final (after unscale + clipping)
    optimizer.step(); scheduler.step()
    on_step_end(state)                                       # state.step already incremented
    optimizer.zero_grad()

so a method such as AdaLoRA (which needs the gradients) or PeriodicLoRA (which merges and resets
optimizer state) needs no user code between ``backward`` and ``step``. A callback that sets
``state.skip_step`` in ``on_before_optimizer_step`` vetoes that step (the NaN guard does, then stops).
``on_evaluate`` follows every evaluation and ``on_save(state, directory)`` every checkpoint;
``state_dict``/``load_state_dict`` go into checkpoints (tensors allowed), so ``--resume`` is exact.
``on_control(state, command)`` answers a request made while training (``lorakit control``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class TrainState:
    """What callbacks may read (and, where documented, change) during training."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    step: int = 0
    """Optimizer steps completed."""
    total_steps: int = 0
    epoch: int = 0
    loss: float | None = None
    metrics: dict = field(default_factory=dict)
    should_stop: bool = False
    run_dir: Any = None
    is_main_process: bool = True
    # -- added by the training loop (lorakit.train.loop) -------------------------------------------
    steps_per_epoch: int = 0
    lr: float = 0.0
    """Learning rate of the first parameter group after the last step."""
    grad_norm: float | None = None
    """Norm of the gradients before clipping, set before ``on_before_optimizer_step``."""
    skip_step: bool = False
    """Set in ``on_before_optimizer_step`` to skip this optimizer step (e.g. non-finite loss)."""
    stop_reason: str | None = None
    interrupted: bool = False
    """Stopped on request (:mod:`lorakit.train.control`) after a checkpoint: resumable, nothing is exported."""
    samples_seen: int = 0
    tokens_seen: int = 0
    train_seconds: float = 0.0
    """Seconds spent in the training loop, over every session of the run (resumes add theirs)."""
    started_at: float | None = None
    """When the run's training began (``time.time()``), kept across resumes (kohya's ``ss_training_started_at``)."""
    world_size: int = 1
    sharded: bool = False
    """The model is sharded (FSDP2): a forward pass needs every rank, so evaluation runs on all of them."""
    step_layout: dict | None = None
    """What each optimizer step reads (e.g. ``{"samples_per_step": 8}``): a checkpoint resumes on another
    number of processes only when it is the same."""
    callbacks: list = field(default_factory=list)
    """Every callback of the run (the checkpoint callback saves their ``state_dict``s)."""


class Callback:
    """Base class: override what you need. ``state_dict``/``load_state_dict`` make resume exact."""

    def on_train_begin(self, state: TrainState) -> None: ...

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        return None

    def on_before_optimizer_step(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None: ...

    def on_evaluate(self, state: TrainState, metrics: dict) -> None: ...

    def on_save(self, state: TrainState, directory) -> None: ...

    def on_control(self, state: TrainState, command: str) -> bool:
        """A request from outside (``save``, ``sample``; :mod:`lorakit.train.control`); True when handled."""
        return False

    def on_train_end(self, state: TrainState) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def run_callbacks(callbacks: list[Callback], event: str, state: TrainState, *args) -> None:
    for cb in callbacks:
        getattr(cb, event)(state, *args)
