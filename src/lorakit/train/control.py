"""Talk to a running training through its run directory: ``lorakit control RUN_DIR stop|save|sample``
(or ``lorakit ui``'s buttons) drops a request file into ``RUN_DIR/control/``, and the :class:`Control`
callback reads that folder between optimizer steps::

    stop     save a checkpoint (and the task's file for it), then end the run cleanly; nothing is
             exported and ``lorakit train CONFIG --resume`` continues from that checkpoint
    save     save a checkpoint now (the diffusion task also writes a LoRA file for this step)
    sample   draw the task's samples now (the diffusion task's ``sample.prompts``)

A file per request (``<time_ns>-<command>``, written atomically) never loses a request to a race
between the writer and the reader. Requests older than the training process are stale (left by a
run that had already ended) and are dropped unread. The callback also keeps ``RUN_DIR/status.json``
(pid, state, step, total) current, at most once a second and at the start and end of training, so
a watcher sees progress without parsing the log.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..formats._io import atomic_write, read_json, write_json
from .callbacks import Callback, TrainState

COMMANDS = ("stop", "save", "sample")
FOLDER, STATUS = "control", "status.json"
_STARTED = time.time()  # imported when the training process starts (lorakit.train.run imports it)


def request(run_dir: str | Path, command: str) -> Path:
    """Ask the training in ``run_dir`` to ``stop``, ``save`` or ``sample`` at its next step; the request file."""
    if command not in COMMANDS:
        raise ValueError(f"control command {command!r}: expected one of {', '.join(COMMANDS)}.")
    folder = Path(run_dir) / FOLDER
    path = folder / f"{time.time_ns()}-{command}"
    atomic_write(path, lambda tmp: Path(tmp).write_text(command + "\n"))
    return path


def read_status(run_dir: str | Path) -> dict | None:
    """``status.json`` of a run (``None`` when there is none or it cannot be read)."""
    try:
        status = read_json(Path(run_dir) / STATUS)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def clear_requests(run_dir: str | Path) -> None:
    """Remove every pending request (a launcher does this before starting a run)."""
    folder = Path(run_dir) / FOLDER
    if folder.is_dir():
        for entry in folder.iterdir():
            if _command_of(entry.name) is not None:
                entry.unlink(missing_ok=True)


def _command_of(name: str) -> str | None:
    stamp, _, command = name.partition("-")
    return command if stamp.isdigit() and command in COMMANDS else None


class Control(Callback):
    """Reads ``RUN_DIR/control/`` after each optimizer step and keeps ``RUN_DIR/status.json`` (rank 0 reads;
    with several processes the command is broadcast so that every rank acts on the same step)."""

    def __init__(self, run_dir: str | Path, status_every: float = 1.0):
        self.run_dir, self.folder = Path(run_dir), Path(run_dir) / FOLDER
        self.status_every, self.last_status = status_every, 0.0
        self.started, self.start_step = time.time(), 0

    def _pending(self) -> list[Path]:
        try:
            entries = [e for e in os.scandir(self.folder) if _command_of(e.name) is not None]
        except FileNotFoundError:
            return []
        return [Path(e.path) for e in sorted(entries, key=lambda e: e.name)]

    def _read(self) -> list[str]:
        commands = []
        for path in self._pending():
            stale = int(path.name.partition("-")[0]) < _STARTED * 1e9
            path.unlink(missing_ok=True)
            if not stale:
                commands.append(_command_of(path.name))
        return commands

    def _agree(self, state: TrainState, commands: list[str]) -> list[str]:
        """Rank 0's commands on every rank (one small broadcast per step, only with several processes)."""
        if state.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return commands
        device = next(state.model.parameters()).device
        flags = torch.tensor([c in commands for c in COMMANDS], dtype=torch.int32, device=device)
        dist.broadcast(flags, 0)
        return [c for c, f in zip(COMMANDS, flags.tolist(), strict=True) if f]

    def write_status(self, state: TrainState, phase: str) -> None:
        if not state.is_main_process:
            return
        self.last_status = time.time()
        write_json(self.run_dir / STATUS, {
            "pid": os.getpid(), "state": phase, "step": state.step, "total_steps": state.total_steps,
            "steps_per_epoch": state.steps_per_epoch, "start_step": self.start_step, "started": self.started,
            "updated": self.last_status})

    def on_train_begin(self, state: TrainState) -> None:
        self.started, self.start_step = time.time(), state.step  # steps/s of this session = steps / time since
        if state.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.write_status(state, "running")

    def on_step_end(self, state: TrainState) -> None:
        commands = self._agree(state, self._read() if state.is_main_process else [])
        for command in dict.fromkeys(commands):  # one stop/save/sample per step, however often asked
            self.handle(state, command)
        if state.should_stop or time.time() - self.last_status >= self.status_every:
            self.write_status(state, "running")

    def handle(self, state: TrainState, command: str) -> None:
        """Run ``command`` now: callbacks answer ``on_control``; ``stop`` also ends the loop."""
        action = "save" if command == "stop" else command
        handled = [cb.on_control(state, action) for cb in state.callbacks]
        if not any(handled) and state.is_main_process:
            print(f"control: {command!r} requested but nothing in this run handles {action!r}"
                  + (" (the run has no sample prompts)" if action == "sample" else ""), file=sys.stderr, flush=True)
        if command == "stop":
            state.should_stop = state.interrupted = True
            if state.is_main_process:
                print(f"control: stopping at step {state.step} on request; continue with --resume", flush=True)

    def on_train_end(self, state: TrainState) -> None:
        phase = "stopped" if state.interrupted else "failed" if state.stop_reason else "trained"
        self.write_status(state, phase)


def pending(run_dir: str | Path) -> list[str]:
    """Commands waiting in ``run_dir`` (oldest first)."""
    return [_command_of(p.name) for p in Control(run_dir)._pending()]


__all__ = ["COMMANDS", "Control", "clear_requests", "pending", "read_status", "request"]
