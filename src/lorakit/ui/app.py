"""The ASGI application of ``lorakit ui``: FastAPI routes over a workspace, server-rendered pages (Jinja2)
with a little plain JavaScript, live job pages by server-sent events.

    from lorakit.ui.app import create_app
    app = create_app("my-workspace")          # a FastAPI app behind the Host/Origin/token guards

Errors are one line of JSON, ``{"error": "...", "code": "..."}``, with the status saying what kind:
400 bad input, 404 not found, 409 conflict (exists, changed meanwhile), 413 too large.
"""

from __future__ import annotations

import html
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from .captions import Captions
from .configs import Configs
from .datasets import Datasets
from .jobs import JobStore
from .runner import Runner
from .security import Protected
from .thumbs import Thumbnails
from .uploads import Limits
from .workspace import PathError, Workspace

HERE = Path(__file__).parent
ERRORS = ((PathError, 400, "bad_path"), (FileNotFoundError, 404, "not_found"), (LookupError, 404, "not_found"),
          (FileExistsError, 409, "conflict"), (PermissionError, 403, "forbidden"),
          (IsADirectoryError, 400, "bad_path"), (NotADirectoryError, 400, "bad_path"),
          (ValueError, 400, "bad_request"), (TypeError, 400, "bad_request"))


@dataclass
class UI:
    """Everything a route needs, on ``app.state.ui``."""

    ws: Workspace
    datasets: Datasets
    captions: Captions
    thumbs: Thumbnails
    configs: Configs
    store: JobStore
    runner: Runner
    limits: Limits
    templates: Jinja2Templates


def rst_inline(text: str):
    """A docstring's ````literal```` spans as ``<code>`` (the help texts are the config's attribute docstrings)."""
    import re

    from markupsafe import Markup, escape

    return Markup(re.sub(r"``(.+?)``", r"<code>\1</code>", str(escape(text))))


def error_for(exc: Exception) -> tuple[int, str]:
    for kind, status, code in ERRORS:
        if isinstance(exc, kind):
            return status, code
    return 500, "internal"


def build(workspace: str | Path, limits: Limits | None = None, start_runner: bool = True) -> FastAPI:
    """The bare FastAPI app (no guards; :func:`create_app` adds them)."""
    from . import api_data, api_jobs, pages

    ws = Workspace(workspace)
    store = JobStore(ws.state / "jobs.sqlite3")
    runner = Runner(ws, store)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["rst"] = rst_inline
    ui = UI(ws, Datasets(ws), Captions(ws), Thumbnails(ws), Configs(ws), store, runner, limits or Limits(), templates)

    @asynccontextmanager
    async def lifespan(app):
        if start_runner:
            runner.start()
        yield
        runner.close()  # jobs keep running: they are in their own sessions

    app = FastAPI(title="lorakit ui", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = ui
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for module in (pages, api_data, api_jobs):
        app.include_router(module.router)

    async def on_error(request: Request, exc: Exception):
        status, code = error_for(exc)
        message = str(exc) or type(exc).__name__
        if isinstance(exc, (FileNotFoundError, PermissionError)) and exc.filename:
            message = f"{exc.strerror}: {ws.rel(exc.filename) if str(exc.filename).startswith(str(ws.root)) else exc.filename}"
        if status == 500:
            message = f"internal error ({type(exc).__name__}: {message}); this is a lorakit bug, please report it."
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message, "code": code}, status)
        try:
            return pages.render(request, "error.html", status, status=status, message=message)  # with the header
        except Exception:  # noqa: BLE001  (the job table itself failing: a bare page still says what happened)
            return HTMLResponse(f"<h1>{status}</h1><p>{html.escape(message)}</p>", status)

    for kind in {k for k, _, _ in ERRORS} | {Exception}:  # Exception: a bug, answered 500 (and logged)
        app.add_exception_handler(kind, on_error)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(parts), "code": "bad_request"}, 400)

    @app.exception_handler(404)
    async def on_missing(request: Request, exc):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": f"no such endpoint: {request.method} {request.url.path}", "code": "not_found"},
                                404)
        return HTMLResponse(f"<h1>404</h1><p>no page at {request.url.path}</p>", 404)
    return app


def create_app(workspace: str | Path, *, host: str = "127.0.0.1", token: str | None = None,
               allowed_hosts: list[str] | None = None, limits: Limits | None = None, start_runner: bool = True):
    """The UI for ``workspace`` behind its guards (see :mod:`.security`); ``app.app`` is the bare FastAPI app."""
    limits = limits or Limits()
    return Protected(build(workspace, limits, start_runner), host=host, token=token, allowed_hosts=allowed_hosts,
                     upload_limit=limits.max_total_bytes + (1 << 20))


def serve(workspace: str | Path, *, host: str = "127.0.0.1", port: int = 7870, token: str | None = None,
          allowed_hosts: list[str] | None = None, limits: Limits | None = None, on_ready=None) -> None:
    """Serve until interrupted; jobs started from the UI keep running after it exits. ``on_ready()`` is
    called once the socket listens (the CLI prints the URL then)."""
    import asyncio

    import uvicorn

    class QuietServer(uvicorn.Server):
        async def main_loop(self):
            # uvicorn wakes ten times a second to look for a shutdown request; once a second is enough,
            # so an idle UI stays idle (the Date header, which that tick refreshes, is left out)
            counter = 0
            while not self.should_exit:
                counter += 1
                await asyncio.sleep(1.0)
                self.should_exit = await self.on_tick(counter)

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started and on_ready is not None:
                on_ready()

    import gc

    app = create_app(workspace, host=host, token=token, allowed_hosts=allowed_hosts, limits=limits)
    # torch and transformers leave ~230k objects that every full garbage collection walks (0.15 s each, set
    # off now and then by the event loop's own small allocations): freeze them, so an idle UI stays idle
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", date_header=False,
                            timeout_graceful_shutdown=2)
    QuietServer(config).run()
