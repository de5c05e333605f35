"""``lorakit.train.run(config)``: a whole training run of any task, from a config to a run directory.

Run directory::

    config.yaml          the resolved config        metrics.jsonl   train/eval rows
    checkpoint-NNNNNN/   resumable checkpoints      loss.png        loss and lr curves
    <the task's export>  e.g. adapter/ (text, PEFT) or <name>.safetensors (diffusion, kohya)
    summary.json         params, size, speed, best eval (whole-run totals, kept across resumes)
    .lorakit-lock        while a run trains: one run per folder (train/lock.py)

Under ``torchrun`` (``WORLD_SIZE`` > 1) it trains data-parallel (gloo on CPU, nccl on CUDA) with DDP, or
with FSDP2 when ``train.distributed: fsdp`` (:mod:`lorakit.train.fsdp`); every rank reads its own shard of
each global batch and only rank 0 writes files (FSDP checkpoints: every rank its shard). The process
group's life is :mod:`lorakit.train.distributed`'s.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..formats._io import atomic_write, write_json
from .callbacks import Callback
from .checkpoint import list_checkpoints, load_checkpoint
from .control import Control
from .distributed import device_for, launch_env, setup
from .fsdp import full_trainable
from .heap import keep_heap
from .hooks import (
    Checkpointer,
    Evaluator,
    MetricsLogger,
    NanGuard,
    NonFiniteLossError,
    ProgressBar,
    step_summary,
)
from .lock import run_lock
from .loop import Trainer
from .optim import make_scheduler, warmup_steps
from .report import dir_size, format_summary, plot_metrics
from .task import get_task
from .threads import share_cpu_threads


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    model: torch.nn.Module = field(repr=False)
    tokenizer: object = field(repr=False, default=None)
    labels: list | None = None


def _say(main: bool, text: str) -> None:
    if main:
        from rich.console import Console

        Console(highlight=False).print(text)


def run(cfg, callbacks: list[Callback] | None = None, resume: bool = False, quiet: bool = False) -> RunResult:
    """Train as ``cfg`` says (any task's config, see :mod:`lorakit.train.task`); returns the run
    directory, the summary and the trained (bare) model.

    ``callbacks`` (e.g. AdaLoRA's or PeriodicLoRA's) run after the NaN guard and before the task's own
    (evaluation, samples), logging and checkpointing. Raises ``NonFiniteLossError`` when the loss
    diverges (the last good checkpoint is kept), ``RunLockedError`` when another run holds the folder
    (``train/lock.py``; rank 0 takes the lock, torchrun stops the other ranks when it fails), and
    ``DistributedRunError`` when another process of a multi-process run stopped. Under FSDP the returned
    model is sharded (usable while the process group lives).
    """
    main = int(launch_env(dict(os.environ)).get("RANK", "0")) == 0  # torchrun's RANK or srun's SLURM_PROCID
    with run_lock(cfg.train.output_dir) if main else contextlib.nullcontext():
        return _run(cfg, callbacks, resume, quiet)


def _run(cfg, callbacks: list[Callback] | None, resume: bool, quiet: bool) -> RunResult:
    task = get_task(getattr(cfg, "task", None))
    t = cfg.train
    kind = "cuda" if cfg.model.device == "cuda" or (cfg.model.device == "auto" and torch.cuda.is_available()) else "cpu"
    d = setup(kind, t.distributed)
    rank, world, main = d.rank, d.world, d.main
    share_cpu_threads(kind)  # under torchrun on CPU: cores / local processes (train/threads.py)
    run_dir, live, ok = Path(t.output_dir), {}, False
    try:
        device = device_for(cfg.model.device, d)
        existing = list_checkpoints(run_dir)
        if existing and not resume:
            raise FileExistsError(f"{run_dir} already has checkpoints ({existing[-1].name}); pass --resume to "
                                  "continue that run, or choose another train.output_dir.")
        if resume and not existing:
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir} (checkpoints need train.save_every or "
                                    "train.save_every_epochs).")
        sharding = d.strategy == "fsdp" and world > 1  # built in CPU memory: only each rank's shards reach a GPU
        whole = [type(cb).__name__ for cb in callbacks or [] if sharding and getattr(cb, "whole_parameters", False)]
        if whole:
            raise ValueError(f"{whole[0]} changes whole parameters between steps, which FSDP keeps sharded; train with "
                             "train.distributed: ddp (or one process).")
        # every rank builds the same adapter (FSDP2, unlike DDP, broadcasts nothing) and caches the same latents
        torch.manual_seed(t.seed)
        parts = task.build(cfg, torch.device("cpu") if sharding else device)
        for helper in parts.extra.get("helpers", []) if sharding else []:
            helper.to(device)  # frozen modules outside the sharded model (a VAE for the latent cache)
        data = task.data(cfg, parts, rank, world)
        if rank:
            torch.manual_seed(t.seed + rank)  # then each rank its own dropout; rank 0 goes on as one process does
        per_epoch, total, plan = task.step_plan(cfg, data, world)
        model = parts.model
        report = _params(model)
        # before the optimizer: FSDP2 swaps in sharded parameters
        live["model"] = d.wrap(model, cfg, device, parts.extra.get("fsdp_policy"))
        optimizer = task.make_optimizer(task.param_groups(parts, cfg), cfg, device)
        scheduler = make_scheduler(optimizer, t, total)
        if not quiet:
            _say(main, f"[bold]{run_dir}[/]: {report[0]:,} trainable of {report[1]:,} params "
                       f"({100 * report[0] / report[1]:.3f}%), method {t.method}")
            _say(main, step_summary(plan, t, per_epoch, total, warmup_steps(t, total)))
        cbs: list[Callback] = [NanGuard(check_grads=t.mixed_precision != "fp16"), *(callbacks or []),
                               *task.callbacks(cfg, parts, data, device)]
        cbs.append(MetricsLogger(run_dir / "metrics.jsonl", t.log_every))
        if t.progress and not quiet:
            cbs.append(ProgressBar(f"{t.method}"))
        config_dict = cfg.to_dict()
        keep = t.keep_last if t.keep_last is not None else 1 << 30  # None keeps every checkpoint
        cbs.append(Checkpointer(run_dir, t.save_every, t.save_every_epochs, keep, config_dict))
        cbs.append(Control(run_dir))  # last: a stop/save request right after a due checkpoint reuses it
        trainer = live["trainer"] = Trainer(live["model"], data, t, optimizer, scheduler, total_steps=total,
                                            device=device, callbacks=cbs, run_dir=run_dir, loss_fn=task.loss,
                                            train_modules=parts.train_modules or None)
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(run_dir / "config.yaml",
                         lambda tmp: Path(tmp).write_text(yaml.safe_dump(config_dict, sort_keys=False)))
        if resume:
            load_checkpoint(trainer.state, existing[-1], rank, t.seed)
            _say(main and not quiet, f"resumed from {existing[-1]} at step {trainer.state.step}")
        if t.keep_heap and device.type == "cpu":
            keep_heap()
        if trainer.state.started_at is None:  # a resumed run keeps the time its training first began
            trainer.state.started_at = time.time()
        start, seen = time.perf_counter(), (trainer.state.samples_seen, trainer.state.tokens_seen, trainer.state.step)
        state = trainer.fit()
        seconds = time.perf_counter() - start
        if state.stop_reason is not None:
            last = list_checkpoints(run_dir)
            keep = f"The last good checkpoint is {last[-1]}." if last else "No checkpoint was written before it."
            raise NonFiniteLossError(f"training stopped: {state.stop_reason} {keep}")
        if state.interrupted:  # lorakit control stop: the checkpoint is written; no export, no summary
            _say(main and not quiet, f"stopped at step {state.step} of {state.total_steps} on request; continue "
                                     "with `lorakit train CONFIG --resume`")
            return RunResult(run_dir, {"stopped": True, "steps": state.step, "total_steps": state.total_steps},
                             model, parts.extra.get("tokenizer"), parts.extra.get("labels"))
        with full_trainable(model):  # FSDP: rank 0 sees the whole adapter, gathered from every shard
            saved = task.export(parts, cfg, run_dir, state) if main else run_dir
        evaluator = next((c for c in cbs if isinstance(c, Evaluator)), None)
        summary = {"task": task.name, "method": t.method, "trainable_params": report[0], "total_params": report[1],
                   "trainable_percent": 100 * report[0] / report[1], "saved_path": str(saved),
                   "saved_bytes": dir_size(saved), "steps": state.step,
                   "epochs": round(state.step / max(state.steps_per_epoch, 1), 4),
                   # the whole run, every session of it (a resume adds to these, never replaces them)
                   "train_seconds": state.train_seconds, "samples_seen": state.samples_seen,
                   "tokens_seen": state.tokens_seen, "started_at": state.started_at,
                   "samples_per_s": state.samples_seen / max(state.train_seconds, 1e-9),
                   "tokens_per_s": state.tokens_seen / max(state.train_seconds, 1e-9),
                   "session": {"from_step": seen[2], "seconds": seconds,  # this call of run() alone
                               "samples_per_s": (state.samples_seen - seen[0]) / max(seconds, 1e-9)},
                   "world_size": world,
                   "final_loss": state.loss, "best_eval": evaluator.best if evaluator else None,
                   "final_eval": {k: v for k, v in state.metrics.items() if k.startswith("eval_")} or None,
                   **task.summary(parts, cfg, device)}
        if main:
            write_json(run_dir / "summary.json", summary)
            if t.plot:
                plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png", f"{t.method}: loss")
            if not quiet:
                _say(main, format_summary(summary))
        ok = True
        return RunResult(run_dir, summary, model, parts.extra.get("tokenizer"), parts.extra.get("labels"))
    except Exception as exc:
        lost = d.lost_peer(exc, run_dir)
        if lost is not None:
            raise lost from exc
        raise
    finally:
        trainer = None  # noqa: F841  (with ``live``, the last references to the DDP wrapper go before the group)
        d.close(live, ok)


def _params(model) -> tuple[int, int]:
    import lorakit

    r = lorakit.trainable_parameters(model)
    return r.trainable, r.total
