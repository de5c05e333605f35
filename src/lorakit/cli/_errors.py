"""How every command fails: one message on stderr, a non-zero exit, no traceback unless ``--debug``.

``SafeGroup`` wraps every command: an error caused by the input (``ValueError`` and its subclasses
``ConfigError``/``LoraFileError``, missing/existing/unwritable paths, a missing extra) prints
``error: <message>`` and exits 1; anything else is a bug in lorakit and prints one line saying how to
get the traceback (``lorakit --debug ...`` or ``LORAKIT_DEBUG=1``) and exits 2. Usage errors (an
unknown option, a value of the wrong type) are click's: the command's usage line and the bad option
or value, exit 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)  # "<lora:x:1>" is no emoji code
#: errors that describe bad input (the message says what and how to fix it)
USER_ERRORS = (ValueError, OSError, ImportError, UnicodeError)
DEBUG_ENV = "LORAKIT_DEBUG"


def _bundled(name: str) -> list[type[BaseException]]:
    """``typer._click.exceptions.<name>``: typer >= 0.29 bundles its own click, whose exceptions are
    not the ``click`` package's (older typer uses the ``click`` package)."""
    if importlib.util.find_spec("typer._click") is None:
        return []
    return [getattr(importlib.import_module("typer._click.exceptions"), name)]


#: what the click that typer runs on handles itself (--help, Exit, Abort, its own errors), from both clicks
CLICK_SIGNALS = (typer.Exit, typer.Abort, click.ClickException, click.exceptions.Exit, click.exceptions.Abort,
                 *_bundled("ClickException"))
USAGE_ERRORS = (click.UsageError, *_bundled("UsageError"))


def usage_error(exc) -> None:
    """click's usage message on stderr (the command's usage line, a help hint, ``Error: <the bad option or
    value>``) and exit 2; typer's framed version would wrap a long message across lines."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # the help was the answer: typer shows it
        raise exc
    exc.show()
    raise typer.Exit(exc.exit_code)


def fail(message: str, code: int = 1):
    """Print ``error: message`` on stderr and exit with ``code``."""
    err.print(f"[bold red]error:[/] {escape(str(message))}")
    raise typer.Exit(code)


def debugging(ctx: click.Context | None = None) -> bool:
    ctx = ctx or click.get_current_context(silent=True)
    return bool(os.environ.get(DEBUG_ENV)) or bool(ctx and ctx.find_root().meta.get("lorakit.debug"))


def plain_flags(params):
    """Flags take no value: typer 0.29's help shows ``<bool>`` after them (``--overwrite <bool>``) unless
    they carry a metavar, so give them an empty one. Returns ``params``."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class SafeGroup(TyperGroup):
    """A typer group whose commands never end in a traceback (unless debugging), whose usage errors
    are click's, and whose help shows flags (its own, its commands' and their subcommands') without a value."""

    def get_params(self, ctx):
        return plain_flags(super().get_params(ctx))

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        todo = [command] if command is not None else []
        while todo:  # the command, and every command of a sub-group (``sd generate``)
            cmd = todo.pop()
            plain_flags(cmd.get_params(ctx))
            if isinstance(cmd, TyperGroup) and not isinstance(cmd, SafeGroup):
                todo += [cmd.get_command(ctx, name) for name in cmd.list_commands(ctx)]
        return command

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except USAGE_ERRORS as exc:
            usage_error(exc)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USAGE_ERRORS as exc:
            usage_error(exc)
        except CLICK_SIGNALS:
            raise
        except Exception as exc:
            if debugging(ctx):
                raise
            if isinstance(exc, USER_ERRORS) or type(exc).__name__ in ("NonFiniteLossError", "DistributedRunError"):
                fail(str(exc) or type(exc).__name__)
            first = (str(exc).splitlines() or [""])[0][:300]
            fail(f"internal error ({type(exc).__name__}: {first}). This is a lorakit bug; run the command again "
                 f"as `lorakit --debug ...` (or with {DEBUG_ENV}=1) to see the traceback, and report it.", code=2)
