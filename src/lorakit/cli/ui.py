"""``lorakit control RUN_DIR stop|save|sample`` (talk to a running training) and ``lorakit ui`` (the local
web UI, :mod:`lorakit.ui`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from . import app
from ._errors import fail

console = Console(highlight=False)


@app.command()
def control(run_dir: Annotated[Path, typer.Argument(help="The run directory (train.output_dir) of a running training.")],
            command: Annotated[str, typer.Argument(help="stop (checkpoint, then end; --resume continues), save "
                                                        "(checkpoint now) or sample (samples now).")]):
    """Ask a running training to stop, save or sample at its next optimizer step."""
    from ..train.control import COMMANDS, read_status, request
    from ..ui.processes import start_time

    if command not in COMMANDS:
        fail(f"command {command!r}: expected one of {', '.join(COMMANDS)}.", code=2)
    status = read_status(run_dir)
    started = start_time(int(status.get("pid", 0))) if status else None
    if status is None or status.get("state") != "running" or started is None or started > status["started"] + 1:
        fail(f"no training is running in {run_dir} (its status.json is missing, or says it ended, or its process "
             "is gone); start it with `lorakit train CONFIG` (--resume to continue).")
    path = request(run_dir, command)
    console.print(f"requested {command!r} at the next step of the training in {run_dir} (pid {status['pid']}): {path.name}")
