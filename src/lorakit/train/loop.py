"""The one training loop. Everything optional (eval, checkpoints, logging, NaN guard, AdaLoRA,
PeriodicLoRA) is a callback; see :mod:`lorakit.train.callbacks` for the order of events.

The loop knows no task: ``loss_fn(model, batch) -> (loss, counts)`` comes from the task
(:mod:`lorakit.train.task`), ``counts`` (``samples``, ``tokens``) feed the throughput numbers, and
only ``train_modules`` are switched to train mode (a frozen VAE or text encoder stays in eval).

Step ``s`` of a run always reads the same micro-batches (the data is a function of seed and epoch),
so resuming from a checkpoint at step ``s`` only needs the weights, optimizer, scheduler, RNG and
callback states, not a data-loader position.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.distributed as dist
from torch import nn

from .callbacks import Callback, TrainState, run_callbacks
from .config import TrainArgs
from .distributed import full_value, global_mean, skip_sync
from .task import StepData


def _autocast(device: torch.device, mixed: str):
    if mixed == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mixed == "bf16" else torch.float16)


def _to(batch: dict, device: torch.device) -> dict:
    """Tensors to ``device``; other values (caption lists, sizes) pass through unchanged."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """The default ``loss_fn``: a Hugging Face model's own loss; counts from ``input_ids``/``attention_mask``."""
    counts = {"samples": batch["input_ids"].shape[0]}
    if "attention_mask" in batch:
        counts["tokens"] = batch["attention_mask"].sum()
    return model(**batch).loss, counts


class Trainer:
    """Runs ``total_steps`` optimizer steps of ``model`` on ``batches`` with ``callbacks``.

    ``model`` may be wrapped in ``DistributedDataParallel`` or sharded by FSDP2 (in place);
    ``state.model`` is always the bare model.
    ``loss_fn(model, batch) -> (loss, counts)`` defaults to :func:`model_loss`; ``train_modules``
    (default: the whole model) are the modules put in train mode.
    """

    def __init__(self, model: nn.Module, batches: StepData, args: TrainArgs, optimizer, scheduler, *,
                 total_steps: int, device: torch.device, callbacks: list[Callback] | None = None,
                 run_dir=None, loss_fn=None, train_modules: list[nn.Module] | None = None):
        self.model, self.batches, self.args = model, batches, args
        self.device, self.loss_fn = device, loss_fn or model_loss
        bare = model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.train_modules = train_modules
        self.params = [p for p in bare.parameters() if p.requires_grad]
        self.accum = args.grad_accum
        spe = len(batches) // self.accum
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.state = TrainState(model=bare, optimizer=optimizer, scheduler=scheduler, total_steps=total_steps,
                                run_dir=run_dir, is_main_process=world == 1 or dist.get_rank() == 0,
                                steps_per_epoch=spe, world_size=world, callbacks=list(callbacks or []),
                                lr=optimizer.param_groups[0]["lr"], sharded=hasattr(bare, "set_requires_gradient_sync"),
                                step_layout={**batches.step_layout(self.accum), "steps_per_epoch": spe}
                                if hasattr(batches, "step_layout") else None)
        self.scaler = torch.amp.GradScaler(device.type) if args.mixed_precision == "fp16" else None

    @property
    def callbacks(self) -> list[Callback]:
        return self.state.callbacks

    def _micro_step(self, batch: dict, last: bool) -> torch.Tensor:
        with skip_sync(self.model, not last):
            with _autocast(self.device, self.args.mixed_precision):
                loss, counts = self.loss_fn(self.model, _to(batch, self.device))
                total = loss
                for cb in self.callbacks:
                    extra = cb.extra_loss(self.state)
                    if extra is not None:
                        total = total + extra
            scaled = total / self.accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        self.state.samples_seen += int(counts.get("samples", 0)) * self.state.world_size
        self.state.tokens_seen += int(counts.get("tokens", 0)) * self.state.world_size
        return total.detach().float()  # the optimised objective, extra losses included

    def _clip(self) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.state.optimizer)
        limit = self.args.max_grad_norm if self.args.max_grad_norm is not None else math.inf
        return float(full_value(torch.nn.utils.clip_grad_norm_(self.params, limit)))  # FSDP: a DTensor

    def _optimizer_step(self) -> None:
        st = self.state
        if self.scaler is not None:
            self.scaler.step(st.optimizer)  # skips the step itself when fp16 grads overflowed
            self.scaler.update()
        else:
            st.optimizer.step()
        st.scheduler.step()
        st.step += 1
        st.lr = st.optimizer.param_groups[0]["lr"]
        st.train_seconds = self._clock[0] + time.perf_counter() - self._clock[1]  # before on_step_end's checkpoint

    def fit(self) -> TrainState:
        """Train from ``state.step`` (0, or where a restored checkpoint stopped) to ``total_steps``."""
        st, opt = self.state, self.state.optimizer
        self._clock = (st.train_seconds, time.perf_counter())  # earlier sessions' seconds, this session's start
        self.model.train()  # the DDP wrapper too
        if self.train_modules is not None:
            self.state.model.eval()
            for module in self.train_modules:
                module.train()
        run_callbacks(self.callbacks, "on_train_begin", st)
        while st.step < st.total_steps and not st.should_stop:
            st.epoch, offset = divmod(st.step, st.steps_per_epoch)
            micro = self.batches.epoch(st.epoch, offset * self.accum)
            for _ in range(offset, st.steps_per_epoch):
                losses = [self._micro_step(next(micro), k == self.accum - 1) for k in range(self.accum)]
                st.loss = global_mean(torch.stack(losses).mean(), st.world_size)
                st.grad_norm = self._clip()
                st.skip_step = False
                run_callbacks(self.callbacks, "on_before_optimizer_step", st)
                if not st.skip_step:  # a skipped step's batches are consumed; the NaN guard also stops
                    self._optimizer_step()
                    run_callbacks(self.callbacks, "on_step_end", st)
                opt.zero_grad(set_to_none=True)
                if st.should_stop or st.step >= st.total_steps:
                    break
        run_callbacks(self.callbacks, "on_train_end", st)
        st.train_seconds = self._clock[0] + time.perf_counter() - self._clock[1]
        return st
