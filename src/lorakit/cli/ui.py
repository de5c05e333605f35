"""``lorakit ui`` (the local web UI, :mod:`lorakit.ui`), ``lorakit control RUN_DIR stop|save|sample`` (talk to a
running training) and ``lorakit caption`` (auto-captioning with a local model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

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
        raise typer.BadParameter(f"{command!r}: expected one of {', '.join(COMMANDS)}.", param_hint="COMMAND")
    status = read_status(run_dir)
    started = start_time(int(status.get("pid", 0))) if status else None
    if status is None or status.get("state") != "running" or started is None or started > status["started"] + 1:
        fail(f"no training is running in {run_dir} (its status.json is missing, or says it ended, or its process "
             "is gone); start it with `lorakit train CONFIG` (--resume to continue).")
    path = request(run_dir, command)
    console.print(f"requested {command!r} at the next step of the training in {run_dir} (pid {status['pid']}): {path.name}")


@app.command()
def caption(folder: Annotated[Path, typer.Argument(help="Dataset folder: its images and those of its subfolders.")],
            model: Annotated[Path, typer.Option("--model", "-m", help="Local transformers image-to-text model "
                                                "directory (BLIP, GIT, Florence-2, a VLM).")],
            prefix: Annotated[str, typer.Option(help="Text before every caption (e.g. the trigger word).")] = "",
            suffix: Annotated[str, typer.Option(help="Text after every caption.")] = "",
            prompt: Annotated[str, typer.Option(help="Text the caption continues, a task token "
                                                     "(<MORE_DETAILED_CAPTION>) or a chat model's request.")] = "",
            overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing captions (default: "
                                                                         "skip images that have one).")] = False,
            max_new_tokens: Annotated[int, typer.Option(help="Longest caption, in tokens.")] = 40,
            batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 4,
            device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N.")] = "cpu",
            progress: Annotated[Optional[Path], typer.Option(  # noqa: UP045  (typer needs Optional here)
                help="Write progress as JSON here (lorakit ui reads it).")] = None,
            workspace: Annotated[Optional[Path], typer.Option(  # noqa: UP045
                help="A lorakit ui workspace: replaced captions stay undoable there.")] = None):
    """Caption the images of FOLDER with a local model: `prefix caption suffix` in image.txt beside each."""
    from ..ui.captioner import TransformersCaptioner, caption_folder
    from ..ui.captions import Captions
    from ..ui.workspace import Workspace

    if not folder.is_dir():
        fail(f"{folder}: not a folder; expected a dataset folder of images (kohya's N_name folders inside are read too).")
    if max_new_tokens < 1 or batch_size < 1:
        raise typer.BadParameter(f"--max-new-tokens {max_new_tokens}, --batch-size {batch_size}: both must be at "
                                 "least 1.")
    store = Captions(Workspace(workspace)) if workspace is not None else None
    captioner = TransformersCaptioner(model, prompt=prompt, max_new_tokens=max_new_tokens, device=device)
    counts = caption_folder(folder, captioner, prefix=prefix, suffix=suffix, overwrite=overwrite, progress=progress,
                            store=store, batch_size=batch_size)
    console.print(f"captioned {counts['done']} images of {folder} ({counts['written']} captions written, "
                  f"{counts['skipped']} skipped: they had a caption)")


@app.command("ui")
def ui_cmd(workspace: Annotated[Path, typer.Argument(help="Workspace directory (created when missing).")]
           = Path("lorakit-workspace"),
           port: Annotated[int, typer.Option(help="TCP port.")] = 7870,
           host: Annotated[str, typer.Option(help="Interface to bind: loopback by default; any other address "
                                                  "requires a token.")] = "127.0.0.1",
           token: Annotated[Optional[str], typer.Option(  # noqa: UP045
               envvar="LORAKIT_UI_TOKEN", help="Require this token (made for you when --host is not loopback).")]
           = None,
           allowed_host: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
               help="Another Host name the UI answers to (a reverse proxy's). Repeatable.")] = None,
           example: Annotated[bool, typer.Option("--example", help="Put the sdworld example (dataset, prompts, "
                                                                    "config) into the workspace.")] = False):
    """Serve the web UI for WORKSPACE: datasets and captions, training with live loss and samples, a job
    queue, epoch x strength comparisons. Jobs keep running when the UI exits."""
    import os
    import socket

    try:
        import fastapi  # noqa: F401
        import jinja2  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        fail(f"lorakit ui needs its extra ({exc}); install it with pip install 'lorakit[ui]'.")
    from ..ui.app import serve
    from ..ui.configs import seed_example
    from ..ui.security import is_loopback, new_token
    from ..ui.workspace import Workspace

    if not 0 < port < 65536:
        raise typer.BadParameter(f"{port}: expected a TCP port from 1 to 65535.", param_hint="'--port'")
    if not is_loopback(host) and not token:
        token = new_token()
        console.print(f"[yellow]--host {host} is reachable from other machines: every request needs the token "
                      f"printed below (pass --token to choose it).[/]")
    ws = Workspace(workspace)
    if example:
        made = seed_example(ws)
        console.print(f"example: {', '.join(made) if made else 'already in the workspace'}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        if os.name != "nt":  # as uvicorn binds: connections of a UI that just ended (TIME_WAIT) do not hold the port
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            fail(f"cannot listen on {host}:{port} ({exc.strerror}); another program (another lorakit ui?) uses it. "
                 "Pass --port N, e.g. --port 7871.")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/" + (f"?token={token}" if token else "")
    console.print(f"lorakit ui: workspace {ws.root}; starting…")
    serve(ws.root, host=host, port=port, token=token, allowed_hosts=allowed_host or [],
          on_ready=lambda: console.print(f"  open [bold]{url}[/]  (Ctrl-C stops the UI; running jobs go on)"))
