"""The ``lorakit`` command line: a thin typer layer over library functions.

Each command module registers its commands on ``app``; every command calls a library function
that can be used from Python without the CLI. The library never imports this package.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="lorakit: LoRA fine-tuning, merging and LoRA file tools.")


def main() -> None:
    from . import commands  # noqa: F401  (registers the commands)

    app()
