"""``lorakit serve``: an OpenAI-compatible server for one base model and many LoRA adapters, batching
requests for different adapters into the same decode steps (:func:`lorakit.per_row`).

    from lorakit.serve import ServeConfig, run
    run(ServeConfig(base="models/llama", adapters="adapters/"))

Needs the ``serve`` extra (FastAPI + uvicorn).
"""

from __future__ import annotations

from .config import ServeConfig
from .registry import AdapterError


def create_server(config: ServeConfig, model=None, tokenizer=None):
    """A ``Server`` (its ``.app`` is the ASGI application); ``model``/``tokenizer`` default to ``config.base``."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"lorakit serve needs FastAPI and uvicorn ({exc}); install them with "
                          "pip install 'lorakit[serve]'.") from exc
    from .app import Server

    return Server(config, model, tokenizer)


def run(config: ServeConfig, model=None, tokenizer=None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM drains in-flight requests first)."""
    import uvicorn

    server = create_server(config, model, tokenizer)
    uvicorn.run(server.app, host=config.host, port=config.port, log_level="info",
                timeout_graceful_shutdown=int(config.drain_timeout) + 1)


__all__ = ["AdapterError", "ServeConfig", "create_server", "run"]
