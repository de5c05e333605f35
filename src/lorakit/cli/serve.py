"""``lorakit serve BASE --adapters DIR``: the OpenAI-compatible multi-adapter server (:mod:`lorakit.serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import app

err = Console(stderr=True, highlight=False)


@app.command()
def serve(base: Annotated[Path, typer.Argument(help="Base model: a local Hugging Face model directory.")],
          adapters: Annotated[Optional[Path], typer.Option(help="Directory of PEFT adapter subdirectories; "  # noqa: UP045
                                                           "requests name them in 'model'.")] = None,
          host: Annotated[str, typer.Option(help="Interface to bind (default: loopback only).")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
          api_key: Annotated[Optional[str], typer.Option(envvar="LORAKIT_API_KEY",  # noqa: UP045
                                                         help="Require 'Authorization: Bearer KEY'.")] = None,
          max_loaded: Annotated[int, typer.Option(help="Adapters resident at once (LRU eviction).")] = 8,
          pin: Annotated[Optional[list[str]], typer.Option(help="Adapter to load now and never evict. "  # noqa: UP045
                                                           "Repeatable.")] = None,
          max_batch: Annotated[int, typer.Option(help="Requests decoded together per step.")] = 32,
          max_queue: Annotated[int, typer.Option(help="Waiting requests before 429.")] = 128,
          max_prompt_tokens: Annotated[int, typer.Option(help="Longest prompt accepted.")] = 2048,
          max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 512,
          batching: Annotated[str, typer.Option(help="mixed (adapters share decode steps) or single "
                                                "(one adapter per batch).")] = "mixed",
          dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
          no_runtime_loading: Annotated[bool, typer.Option("--no-runtime-loading",
                                                           help="Disable /v1/load_lora_adapter.")] = False):
    """Serve BASE and the adapters in DIR with an OpenAI-compatible API (/v1/completions, /v1/chat/completions)."""
    from ..config import ConfigError
    from ..serve import AdapterError, ServeConfig, run

    config = ServeConfig(base=str(base), adapters=None if adapters is None else str(adapters), host=host, port=port,
                         api_key=api_key, max_loaded=max_loaded, pinned=pin or [], max_batch=max_batch,
                         max_queue=max_queue, max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens,
                         batching=batching, dtype=dtype, allow_runtime_loading=not no_runtime_loading)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        err.print(f"[bold yellow]warning:[/] binding {host} without --api-key: anyone who can reach it can use it.")
    try:
        run(config)
    except (ConfigError, AdapterError, ImportError, FileNotFoundError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
