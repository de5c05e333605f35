"""Checkpoints that resume a run exactly, without pickles.

A checkpoint is a directory ``checkpoint-000120/`` written under a temporary name, finished by a
completion marker (``COMPLETE``, written last) and then renamed. Only directories with the marker
count as checkpoints; pruning removes the marker first, so a kill at any moment (even half-way
through deleting an old checkpoint) never leaves a directory that looks complete but is not::

    adapter/                     PEFT adapter (method lora), loadable by lorakit or peft
    trainable.safetensors        every trainable parameter by name (exact restore, any method)
    optimizer.safetensors/.json  optimizer state: tensors as safetensors, the rest as JSON
    state.safetensors            RNG states and the callbacks' tensors
    trainer_state.json           step, epoch, scheduler, callback states, counters, data layout
    COMPLETE                     marker: every file above is written (the step, as JSON)

Under FSDP (:mod:`lorakit.train.fsdp`) ``trainable.safetensors`` and ``optimizer.safetensors`` are replaced
by ``sharded/``: each rank's shards of both, by parameter name, read back on any number of ranks. A run
may resume on another number of processes when each optimizer step still sees the same samples (the
data's ``step_layout``, e.g. 2 processes x batch 4 = 1 process x batch 8).

``LORAKIT_CHECKPOINT_PAUSE=<seconds>`` sleeps between the files of a save or prune: it widens the
window for the kill -9 tests (tests/train/test_kill.py) and has no other use.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..formats._io import read_json, read_safetensors, write_json, write_safetensors
from .callbacks import TrainState

NAME = re.compile(r"^checkpoint-(\d+)$")
MARKER = "COMPLETE"
PAUSE_ENV = "LORAKIT_CHECKPOINT_PAUSE"


def _pause() -> None:
    seconds = float(os.environ.get(PAUSE_ENV) or 0)
    if seconds > 0:
        time.sleep(seconds)


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous()


def split_tensors(obj, prefix: str, out: dict, convert=_cpu):
    """Replace every tensor inside ``obj`` by ``{"__tensor__": key}`` and collect ``convert(tensor)`` in ``out``."""
    if isinstance(obj, torch.Tensor):
        out[prefix] = convert(obj)
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {str(k): split_tensors(v, f"{prefix}.{k}", out, convert) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, f"{prefix}.{i}", out, convert) for i, v in enumerate(obj)]
    return obj


def join_tensors(obj, tensors: dict):
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def _optimizer_state(optimizer) -> tuple[dict, dict]:
    tensors: dict = {}
    return split_tensors(optimizer.state_dict(), "opt", tensors), tensors


def _load_optimizer(optimizer, meta: dict, tensors: dict) -> None:
    sd = join_tensors(meta, tensors)
    sd["state"] = {int(k): v for k, v in sd["state"].items()}
    for group in sd["param_groups"]:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict(sd)


def _save_adapters(model, tmp: Path) -> None:
    if getattr(model, "lorakit_configs", None):
        from ..formats.peft import save_adapter

        for name in sorted(getattr(model, "lorakit_trainable", set())):
            save_adapter(model, tmp / ("adapter" if name == "default" else f"adapter-{name}"), name)


def _save_weights(state: TrainState, tmp: Path) -> None:
    """Trainable tensors and optimizer state: rank 0's files, or under FSDP every rank's shards (collective)."""
    model = state.model
    if state.sharded:
        from .fsdp import SHARDED, full_trainable, save_sharded

        dist.barrier()  # rank 0 has made ``tmp``
        meta = save_sharded(model, state.optimizer, tmp / SHARDED)
        with full_trainable(model):
            if state.is_main_process:
                _save_adapters(model, tmp)
                write_json(tmp / "optimizer.json", meta)
        return
    write_safetensors(tmp / "trainable.safetensors", {n: p for n, p in model.named_parameters() if p.requires_grad})
    _save_adapters(model, tmp)
    _pause()
    meta, tensors = _optimizer_state(state.optimizer)
    write_safetensors(tmp / "optimizer.safetensors", tensors)
    write_json(tmp / "optimizer.json", meta)


def save_checkpoint(state: TrainState, directory: str | Path, config: dict | None = None) -> Path:
    """Write ``state`` to ``directory`` atomically (rank 0; under FSDP every rank writes its shards first)."""
    directory = Path(directory)
    if not (state.is_main_process or state.sharded):
        return directory
    tmp = directory.parent / f".{directory.name}.tmp"
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _pause()
    _save_weights(state, tmp)
    if not state.is_main_process:
        return directory
    _pause()
    extra: dict = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            extra[f"rng.cuda.{i}"] = s
    callbacks = [split_tensors(cb.state_dict(), f"cb.{i}", extra) for i, cb in enumerate(state.callbacks)]
    write_safetensors(tmp / "state.safetensors", extra)
    write_json(tmp / "trainer_state.json", {
        "step": state.step, "epoch": state.epoch, "total_steps": state.total_steps,
        "samples_seen": state.samples_seen, "tokens_seen": state.tokens_seen, "world_size": state.world_size,
        "step_layout": state.step_layout, "sharded": state.sharded,
        "train_seconds": state.train_seconds, "started_at": state.started_at, "loss": state.loss,
        "scheduler": state.scheduler.state_dict(), "callbacks": callbacks,
        "callback_types": [type(cb).__name__ for cb in state.callbacks], "config": config})
    _pause()
    write_json(tmp / MARKER, {"step": state.step})  # last: the checkpoint is complete
    if directory.exists():
        _remove(directory)
    os.replace(tmp, directory)
    return directory


def _remove(directory: Path) -> None:
    """Marker first: from then on the directory no longer counts, whatever is left of it."""
    (directory / MARKER).unlink(missing_ok=True)
    _pause()
    shutil.rmtree(directory, ignore_errors=True)


def is_complete(directory: Path) -> bool:
    return NAME.match(directory.name) is not None and (directory / MARKER).is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob("checkpoint-*") if is_complete(p)]
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def prune(run_dir: str | Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; also clear leftovers of interrupted saves and prunes."""
    run_dir = Path(run_dir)
    for old in list_checkpoints(run_dir)[:-keep]:
        _remove(old)
    leftovers = [p for p in run_dir.glob("checkpoint-*") if NAME.match(p.name) and not is_complete(p)]
    leftovers += list(run_dir.glob(".checkpoint-*.tmp"))
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(state: TrainState, directory: str | Path, rank: int = 0, seed: int = 0) -> None:
    """Restore weights, optimizer, scheduler, RNG, counters and callback states into ``state``."""
    directory = Path(directory)
    info = read_json(directory / "trainer_state.json")
    _check_layout(directory, info, state)
    if (directory / "sharded").is_dir():
        from .fsdp import SHARDED, load_sharded

        load_sharded(state.model, state.optimizer, directory / SHARDED, read_json(directory / "optimizer.json"))
    else:
        _load_weights(state, directory)
    state.scheduler.load_state_dict(info["scheduler"])
    extra, _ = read_safetensors(directory / "state.safetensors")
    if rank == 0:
        torch.set_rng_state(extra["rng.cpu"])
        cuda = sorted(k for k in extra if k.startswith("rng.cuda."))
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([extra[k] for k in cuda])
    else:  # only rank 0's RNG is stored; other ranks continue from a seed fixed by (seed, rank, step)
        torch.manual_seed(seed + rank + 1_000_003 * info["step"])
    for cb, saved, kind in zip(state.callbacks, info["callbacks"], info["callback_types"], strict=False):
        if type(cb).__name__ == kind:
            cb.load_state_dict(join_tensors(saved, extra))
    state.step, state.epoch = info["step"], info["epoch"]
    state.samples_seen, state.tokens_seen = info["samples_seen"], info["tokens_seen"]
    # run totals (absent from checkpoints of older lorakit versions)
    state.train_seconds, state.started_at = info.get("train_seconds", 0.0), info.get("started_at")
    state.loss = info.get("loss")
    state.lr = state.optimizer.param_groups[0]["lr"]


def _load_weights(state: TrainState, directory: Path) -> None:
    weights, _ = read_safetensors(directory / "trainable.safetensors")
    live = {n: p for n, p in state.model.named_parameters() if p.requires_grad}
    if set(weights) != set(live):
        missing, extra = sorted(set(live) - set(weights)), sorted(set(weights) - set(live))
        raise ValueError(f"{directory} does not match this model's trainable parameters (missing {missing[:5]}, "
                         f"unexpected {extra[:5]}); was the config changed since the run started?")
    with torch.no_grad():
        for name, p in live.items():
            p.copy_(weights[name])
    tensors, _ = read_safetensors(directory / "optimizer.safetensors")
    _load_optimizer(state.optimizer, read_json(directory / "optimizer.json"), tensors)


def _layout_text(layout: dict | None, world: int) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (layout or {"processes": world}).items())


def _check_layout(directory: Path, info: dict, state: TrainState) -> None:
    """Step s must read the same samples after a resume: the data's layout of a step must not change (another
    number of processes is fine when the batch makes up for it)."""
    saved, now = info.get("step_layout"), state.step_layout
    same = saved == now if saved is not None and now is not None else info["world_size"] == state.world_size
    if not same:
        raise ValueError(f"{directory} was written by a run with {info['world_size']} process(es) whose optimizer "
                         f"steps each read {_layout_text(saved, info['world_size'])}; this run has {state.world_size} "
                         f"reading {_layout_text(now, state.world_size)}. Resume with the same samples per step, e.g. "
                         "scale train.batch_size (or train.grad_accum) by the ratio of the process counts.")
    if state.sharded and not (directory / "sharded").is_dir():
        raise ValueError(f"{directory} holds whole tensors (a run without FSDP); resume it with "
                         "train.distributed: ddp or in one process.")
