"""``lorakit serve BASE --adapters DIR``: the OpenAI-compatible multi-adapter server (:mod:`lorakit.serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import app
from ._errors import fail

err = Console(stderr=True, highlight=False)
Names = Optional[list[str]]  # noqa: UP045  (typer reads the annotation at runtime)


@app.command()
def serve(base: Annotated[str, typer.Argument(help="Base model: a local Hugging Face model directory "
                                              "(or pip:PACKAGE/dir).")],
          adapters: Annotated[Optional[Path], typer.Option(help="Directory of adapters: NAME/adapter_config.json "  # noqa: UP045
                                                           "(PEFT) or NAME/adapter/ (lorakit train runs); requests "
                                                           "name them in 'model'.")] = None,
          host: Annotated[str, typer.Option(help="Interface to bind (default: loopback only).")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
          api_key: Annotated[Optional[str], typer.Option(envvar="LORAKIT_API_KEY",  # noqa: UP045
                                                         help="Require 'Authorization: Bearer KEY' (every path "
                                                         "but /health).")] = None,
          allowed_host: Annotated[Names, typer.Option(help="Host name accepted besides the bound address (a DNS "
                                                      "name, a reverse proxy's); '*' for any. Repeatable.")] = None,
          allow_origin: Annotated[Names, typer.Option(help="Web origin (scheme://host[:port]) whose pages may call "
                                                      "the server; '*' for any. Repeatable.")] = None,
          allow_runtime_loading: Annotated[bool, typer.Option("--allow-runtime-loading",
                                                              help="Enable /v1/load_lora_adapter and "
                                                              "/v1/unload_lora_adapter (off by default).")] = False,
          max_body_bytes: Annotated[int, typer.Option(help="Largest request body in bytes (413 beyond).")] = 1 << 20,
          max_loaded: Annotated[int, typer.Option(help="Adapters resident at once (LRU eviction).")] = 8,
          pin: Annotated[Names, typer.Option(help="Adapter to load now and never evict. Repeatable.")] = None,
          max_batch: Annotated[int, typer.Option(help="Requests decoded together per step.")] = 32,
          max_queue: Annotated[int, typer.Option(help="Waiting requests before 429.")] = 128,
          max_prompt_tokens: Annotated[int, typer.Option(help="Longest prompt accepted.")] = 2048,
          max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 512,
          batching: Annotated[str, typer.Option(help="mixed (adapters share decode steps) or single "
                                                "(one adapter per batch).")] = "mixed",
          dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32"):
    """Serve BASE and the adapters in DIR with an OpenAI-compatible API (/v1/completions, /v1/chat/completions)."""
    from rich.markup import escape

    from ..serve import AdapterError, ServeConfig, run
    from ..serve.registry import scan

    config = ServeConfig(base=base, adapters=None if adapters is None else str(adapters), host=host, port=port,
                         api_key=api_key, allowed_hosts=allowed_host or [], allowed_origins=allow_origin or [],
                         max_body_bytes=max_body_bytes, max_loaded=max_loaded, pinned=pin or [],
                         max_batch=max_batch, max_queue=max_queue, max_prompt_tokens=max_prompt_tokens,
                         max_tokens=max_tokens, batching=batching, dtype=dtype,
                         allow_runtime_loading=allow_runtime_loading)
    try:
        config.validate()
        if adapters is not None:
            found, skipped = scan(adapters)
            if not found:
                why = "; ".join(skipped[:8]) if skipped else "it is empty"
                err.print(f"[bold yellow]warning:[/] no adapter found in {escape(str(adapters))} ({escape(why)}). Expected "
                          "subdirectories holding adapter_config.json (PEFT adapters) or adapter/ (lorakit train "
                          "runs); only the base model is served until one appears.", soft_wrap=True)
        if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
            err.print(f"[bold yellow]warning:[/] binding {escape(host)} without --api-key: anyone who can reach it "
                      "can use it.")
        run(config)
    except AdapterError as exc:  # ConfigError, missing files and extras are user errors for SafeGroup too
        fail(str(exc))
