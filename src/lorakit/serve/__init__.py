"""``lorakit serve``: an OpenAI-compatible server for one base model and many LoRA adapters, batching
requests for different adapters into the same decode steps (:func:`lorakit.per_row`).

    from lorakit.serve import ServeConfig, run
    run(ServeConfig(base="models/llama", adapters="adapters/"))

Needs the ``serve`` extra (FastAPI + uvicorn).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

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


@dataclass
class Running:
    """A server started by ``in_thread``: the ``Server``, its base URL and the uvicorn server."""

    server: object
    url: str
    uvicorn: object

    def stop(self) -> None:
        """Begin a graceful shutdown (in-flight requests drain)."""
        self.uvicorn.should_exit = True


@contextlib.contextmanager
def in_thread(config: ServeConfig, model=None, tokenizer=None, timeout: float = 60.0):
    """Serve in a background thread for the block (scripts, notebooks, tests); port 0 picks a free port."""
    import uvicorn

    server = create_server(config, model, tokenizer)
    uv = uvicorn.Server(uvicorn.Config(server.app, host=config.host, port=config.port, log_level="warning",
                                       timeout_graceful_shutdown=int(config.drain_timeout) + 1))
    thread = threading.Thread(target=uv.run, name="lorakit-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {config.host}:{config.port} (see the log above).")
        time.sleep(0.02)
    host, port = uv.servers[0].sockets[0].getsockname()[:2]
    try:
        yield Running(server, f"http://{host}:{port}", uv)
    finally:
        uv.should_exit = True
        thread.join(timeout=config.drain_timeout + 10)


__all__ = ["AdapterError", "Running", "ServeConfig", "create_server", "in_thread", "run"]
