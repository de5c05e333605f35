"""The ``lorakit`` command line: a thin typer layer over library functions.

Each command module registers its commands on ``app``; every command calls a library function
that can be used from Python without the CLI. The library never imports this package.
Every command fails the same way (:mod:`._errors`): a message on stderr, exit code 1, no traceback.
"""

from __future__ import annotations

import typer

from ._errors import SafeGroup

app = typer.Typer(no_args_is_help=True, add_completion=False, cls=SafeGroup, pretty_exceptions_enable=False,
                  help="lorakit: LoRA fine-tuning, merging and LoRA file tools.")


@app.callback()
def _root(ctx: typer.Context,
          debug: bool = typer.Option(False, "--debug", help="Show the full traceback when a command fails.")):
    ctx.meta["lorakit.debug"] = debug


def main() -> None:
    from . import commands  # noqa: F401  (registers the commands)
    from ._quiet import quiet_third_party

    quiet_third_party()

    app()
