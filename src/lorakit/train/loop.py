"""The one training loop. Everything optional (eval, checkpoints, logging, NaN guard, AdaLoRA,
PeriodicLoRA) is a callback; see :mod:`lorakit.train.callbacks` for the order of events.

Step ``s`` of a run always reads the same micro-batches (``Batches`` is a function of seed and epoch),
so resuming from a checkpoint at step ``s`` only needs the weights, optimizer, scheduler, RNG and
callback states, not a data-loader position.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist
from torch import nn

from .callbacks import Callback, TrainState, run_callbacks
from .config import TrainArgs
from .data import Batches


def _autocast(device: torch.device, mixed: str):
    if mixed == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mixed == "bf16" else torch.float16)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class Trainer:
    """Runs ``total_steps`` optimizer steps of ``model`` on ``batches`` with ``callbacks``.

    ``model`` may be wrapped in ``DistributedDataParallel``; ``state.model`` is always the bare model.
    ``loss_fn(model, batch) -> loss`` defaults to the model's own loss (``model(**batch).loss``).
    """

    def __init__(self, model: nn.Module, batches: Batches, args: TrainArgs, optimizer, scheduler, *,
                 total_steps: int, device: torch.device, callbacks: list[Callback] | None = None,
                 run_dir=None, loss_fn=None):
        self.model, self.batches, self.args = model, batches, args
        self.device, self.loss_fn = device, loss_fn
        bare = model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.ddp = bare is not model
        self.params = [p for p in bare.parameters() if p.requires_grad]
        self.accum = args.grad_accum
        spe = len(batches) // self.accum
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.state = TrainState(model=bare, optimizer=optimizer, scheduler=scheduler, total_steps=total_steps,
                                run_dir=run_dir, is_main_process=not self.ddp or dist.get_rank() == 0,
                                steps_per_epoch=spe, world_size=world, callbacks=list(callbacks or []),
                                lr=optimizer.param_groups[0]["lr"])
        self.scaler = torch.amp.GradScaler(device.type) if args.mixed_precision == "fp16" else None

    @property
    def callbacks(self) -> list[Callback]:
        return self.state.callbacks

    def _forward(self, batch: dict) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(self.model, batch)
        return self.model(**batch).loss

    def _micro_step(self, batch: dict, last: bool) -> torch.Tensor:
        sync = contextlib.nullcontext() if (last or not self.ddp) else self.model.no_sync()
        with sync:
            with _autocast(self.device, self.args.mixed_precision):
                loss = self._forward(_to(batch, self.device))
                total = loss
                for cb in self.callbacks:
                    extra = cb.extra_loss(self.state)
                    if extra is not None:
                        total = total + extra
            scaled = total / self.accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        self.state.samples_seen += batch["input_ids"].shape[0] * self.state.world_size
        self.state.tokens_seen += int(batch["attention_mask"].sum()) * self.state.world_size
        return total.detach().float()  # the optimised objective, extra losses included

    def _global_mean(self, value: torch.Tensor) -> float:
        if self.ddp:  # every rank must see the same loss, so that all of them stop together on NaN
            value = value.clone()
            dist.all_reduce(value)
            value /= self.state.world_size
        return float(value)

    def _clip(self) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.state.optimizer)
        limit = self.args.max_grad_norm if self.args.max_grad_norm is not None else math.inf
        return float(torch.nn.utils.clip_grad_norm_(self.params, limit))

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

    def fit(self) -> TrainState:
        """Train from ``state.step`` (0, or where a restored checkpoint stopped) to ``total_steps``."""
        st, opt = self.state, self.state.optimizer
        self.model.train()
        run_callbacks(self.callbacks, "on_train_begin", st)
        while st.step < st.total_steps and not st.should_stop:
            st.epoch, offset = divmod(st.step, st.steps_per_epoch)
            micro = self.batches.epoch(st.epoch, offset * self.accum)
            for _ in range(offset, st.steps_per_epoch):
                losses = [self._micro_step(next(micro), k == self.accum - 1) for k in range(self.accum)]
                st.loss = self._global_mean(torch.stack(losses).mean())
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
        return st
