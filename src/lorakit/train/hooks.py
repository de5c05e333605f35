"""The built-in callbacks: NaN guard, evaluation, metrics log, progress bar, checkpoints."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from ..formats._io import atomic_write
from .callbacks import Callback, TrainState, run_callbacks
from .checkpoint import list_checkpoints, prune, save_checkpoint
from .fsdp import full_trainable


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss or the gradients stopped being finite."""


class NanGuard(Callback):
    """Skips the optimizer step and stops the run when the loss or the gradient norm is NaN/Inf.

    With fp16 loss scaling, infinite gradients are the scaler's business (it skips the step and lowers
    the scale), so only the loss is checked then.
    """

    def __init__(self, check_grads: bool = True):
        self.check_grads = check_grads

    def on_before_optimizer_step(self, state: TrainState) -> None:
        bad = [] if math.isfinite(state.loss) else [f"loss={state.loss}"]
        if self.check_grads and state.grad_norm is not None and not math.isfinite(state.grad_norm):
            bad.append(f"grad_norm={state.grad_norm}")
        if bad:
            state.skip_step = state.should_stop = True
            state.stop_reason = (f"non-finite {' and '.join(bad)} at optimizer step {state.step + 1}; the step was not "
                                 "applied. Lower train.lr, set train.max_grad_norm, use mixed_precision 'no' or "
                                 "'bf16' instead of 'fp16', or check the data for empty/corrupt samples.")


class Evaluator(Callback):
    """Calls ``evaluate(model) -> metrics`` every ``every`` steps and at the end; tracks the best loss."""

    def __init__(self, evaluate, every: int = 0):
        self.evaluate, self.every = evaluate, every
        self.best: dict | None = None
        self.last_step = -1

    def _run(self, state: TrainState) -> None:
        if not (state.is_main_process or state.sharded) or self.last_step == state.step:
            return  # a sharded model needs every rank for a forward pass
        training = state.model.training
        metrics = self.evaluate(state.model)
        state.model.train(training)
        self.last_step = state.step
        metrics = {f"eval_{k}": v for k, v in metrics.items()}
        state.metrics.update(metrics)
        if self.best is None or metrics.get("eval_loss", math.inf) < self.best.get("eval_loss", math.inf):
            self.best = {"step": state.step, **metrics}
        run_callbacks(state.callbacks, "on_evaluate", state, metrics)

    def on_step_end(self, state: TrainState) -> None:
        if self.every and state.step % self.every == 0:
            self._run(state)

    def on_train_end(self, state: TrainState) -> None:
        if not state.interrupted and (not state.should_stop or state.stop_reason is None):
            self._run(state)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")


class MetricsLogger(Callback):
    """Appends ``{"step", "loss", "lr", ...}`` rows to ``metrics.jsonl`` (rank 0)."""

    def __init__(self, path: str | Path, every: int = 10):
        self.path, self.every = Path(path), max(1, every)
        self.losses: list[float] = []
        self.t0 = self.samples0 = self.tokens0 = 0

    def _write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_train_begin(self, state: TrainState) -> None:
        self.t0, self.samples0, self.tokens0 = time.perf_counter(), state.samples_seen, state.tokens_seen
        if state.is_main_process and self.path.exists():  # resumed: drop rows the restored run never reached
            keep = [r for r in self.path.read_text(errors="replace").splitlines() if _row_step(r) <= state.step]
            atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(r + "\n" for r in keep)))

    def on_step_end(self, state: TrainState) -> None:
        self.losses.append(state.loss)
        if not state.is_main_process or (state.step % self.every and state.step not in (1, state.total_steps)):
            return
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self._write({"step": state.step, "epoch": round(state.step / max(state.steps_per_epoch, 1), 4),
                     "loss": sum(self.losses) / len(self.losses), "lr": state.lr, "grad_norm": state.grad_norm,
                     "samples_per_s": (state.samples_seen - self.samples0) / dt,
                     "tokens_per_s": (state.tokens_seen - self.tokens0) / dt})
        self.losses = []

    def on_evaluate(self, state: TrainState, metrics: dict) -> None:
        if state.is_main_process:
            self._write({"step": state.step, **metrics})


def _row_step(row: str) -> float:
    """The step of a metrics row; a row cut short by a kill counts as past every step (it is dropped)."""
    try:
        return json.loads(row).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return math.inf


class ProgressBar(Callback):
    """A rich progress bar with loss, learning rate and speed (rank 0); when stdout is not a terminal
    (a log file, CI), a plain line every ``every`` steps instead. After a resume the speed covers the
    steps of this session only, and says so."""

    def __init__(self, description: str = "training", every: int = 10, interactive: bool | None = None):
        self.description, self.every = description, max(1, every)
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.progress = self.task = None
        self.plain = False

    def _speed(self, state: TrainState) -> str:
        speed = (state.samples_seen - self.s0) / max(time.perf_counter() - self.t0, 1e-9)
        since = f" (since resume at step {self.step0})" if self.step0 else ""
        return f"{speed:.1f} samples/s{since}"

    def on_train_begin(self, state: TrainState) -> None:
        if not state.is_main_process:
            return
        self.t0, self.s0, self.step0 = time.perf_counter(), state.samples_seen, state.step
        if not self.interactive:
            self.plain = True
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=state.total_steps, completed=state.step, info="")

    def on_step_end(self, state: TrainState) -> None:
        info = f"loss {state.loss:.4f}  lr {state.lr:.2e}  {self._speed(state)}"
        if self.progress is not None:
            self.progress.update(self.task, completed=state.step, info=info)
        elif self.plain and (state.step % self.every == 0 or state.step == state.total_steps):
            print(f"{self.description}: step {state.step}/{state.total_steps}  {info}", flush=True)

    def on_train_end(self, state: TrainState) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class Checkpointer(Callback):
    """Saves a resumable checkpoint every ``every`` steps and/or ``every_epochs`` epochs; keeps the last K."""

    def __init__(self, run_dir: str | Path, every: int = 0, every_epochs: int = 0, keep_last: int = 2,
                 config: dict | None = None):
        self.run_dir, self.every, self.every_epochs = Path(run_dir), every, every_epochs
        self.keep_last, self.config = keep_last, config
        self.saved_step: int | None = None

    def due(self, state: TrainState) -> bool:
        by_steps = self.every and state.step % self.every == 0
        by_epochs = self.every_epochs and state.step % (self.every_epochs * max(state.steps_per_epoch, 1)) == 0
        return bool(by_steps or by_epochs)

    def on_step_end(self, state: TrainState) -> None:
        if self.due(state):
            self.save(state)

    def save(self, state: TrainState) -> Path:
        directory = save_checkpoint(state, self.run_dir / f"checkpoint-{state.step:06d}", self.config)
        self.saved_step = state.step
        if state.is_main_process:
            prune(self.run_dir, self.keep_last)
        with full_trainable(state.model):  # FSDP: rank 0's savers (e.g. kohya files) see whole adapters
            run_callbacks(state.callbacks, "on_save", state, directory)
        return directory

    def on_control(self, state: TrainState, command: str) -> bool:
        """``save`` (also what ``stop`` asks for): a checkpoint now, unless this step already has one."""
        if command != "save":
            return False
        if self.saved_step != state.step:
            self.save(state)
        return True

    def latest(self) -> Path | None:
        found = list_checkpoints(self.run_dir)
        return found[-1] if found else None


def step_summary(plan: str, t, per_epoch: int, total: int, warmup: int) -> str:
    """The line explaining the step count (``plan``: the task's explanation of the per-epoch count); says
    when ``train.max_steps`` replaces the epochs' count."""
    by_epochs = max(1, math.ceil(t.epochs * per_epoch))
    head = f"{plan} = {by_epochs} optimizer steps ({per_epoch} per epoch"
    if t.max_steps is not None and t.max_steps != by_epochs:
        verb = "caps" if t.max_steps < by_epochs else "extends"
        return f"{head}); train.max_steps={t.max_steps} {verb} it: {total} steps, {warmup} warmup"
    return f"{head}, {warmup} warmup)"
