"""How every command fails: one message on stderr, a non-zero exit, no traceback unless ``--debug``.

``SafeGroup`` wraps every command: an error caused by the input (``ValueError`` and its subclasses
``ConfigError``/``LoraFileError``, missing/existing/unwritable paths, a missing extra) prints
``error: <message>`` and exits 1; anything else is a bug in lorakit and prints one line saying how to
get the traceback (``lorakit --debug ...`` or ``LORAKIT_DEBUG=1``) and exits 2.
"""

from __future__ import annotations

import os

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

err = Console(stderr=True, highlight=False, soft_wrap=True)
#: errors that describe bad input (the message says what and how to fix it)
USER_ERRORS = (ValueError, OSError, ImportError, UnicodeError)
DEBUG_ENV = "LORAKIT_DEBUG"


def fail(message: str, code: int = 1):
    """Print ``error: message`` on stderr and exit with ``code``."""
    err.print(f"[bold red]error:[/] {escape(str(message))}")
    raise typer.Exit(code)


def debugging(ctx: click.Context | None = None) -> bool:
    ctx = ctx or click.get_current_context(silent=True)
    return bool(os.environ.get(DEBUG_ENV)) or bool(ctx and ctx.find_root().meta.get("lorakit.debug"))


class SafeGroup(TyperGroup):
    """A typer group whose commands never end in a traceback (unless debugging)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:
            if debugging(ctx):
                raise
            if isinstance(exc, USER_ERRORS) or type(exc).__name__ in ("NonFiniteLossError", "DistributedRunError"):
                fail(str(exc) or type(exc).__name__)
            first = (str(exc).splitlines() or [""])[0][:300]
            fail(f"internal error ({type(exc).__name__}: {first}). This is a lorakit bug; run the command again "
                 f"as `lorakit --debug ...` (or with {DEBUG_ENV}=1) to see the traceback, and report it.", code=2)
