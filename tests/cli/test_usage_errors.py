"""Usage errors on every command: click's usage message (the command's usage line, the bad option or
value), exit 2, no claim of a lorakit bug, a final newline; and ``--help`` shows flags without a value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from lorakit.cli import (
    app,
    commands,  # noqa: F401  (registers the commands)
)

runner = CliRunner()


def _commands() -> list[list[str]]:
    """Every command path of the CLI, sub-groups included (``sd generate``)."""
    root = typer.main.get_command(app)
    ctx = root.make_context("lorakit", ["--help"], resilient_parsing=True)
    paths, todo = [], [([], root)]
    while todo:
        path, group = todo.pop()
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            (todo.append((path + [name], cmd)) if hasattr(cmd, "list_commands") else paths.append(path + [name]))
    return sorted(paths)


COMMANDS = _commands()
# the command lines of the issue, and a wrong-typed value for every kind of option
CASES = [(["convert", "a", "b", "-o", "x"], "No such option: -o"),
         (["train", "--nonexistent", "x.yaml"], "No such option: --nonexistent"),
         (["sd", "generate", "m", "p", "--steps", "abc"], "Invalid value for '--steps'"),
         (["sd", "generate", "m", "p", "--sed", "1"], "No such option: --sed"),
         (["sd", "grid", "m", "p", "--seed", "x"], "Invalid value for '--seed'"),
         (["resize", "a.safetensors", "-o", "b.safetensors", "--rank", "abc"], "Invalid value for '--rank'"),
         (["serve", "base", "--port", "http"], "Invalid value for '--port'"),
         (["merge-loras", "a", "-o", "b", "--density", "half"], "Invalid value for '--density'"),
         (["extract", "a", "b", "-o", "c", "--rank", "1.5"], "Invalid value for '--rank'"),
         (["inspect"], "Missing argument"), (["nosuchcommand"], "No such command 'nosuchcommand'"),
         (["sd", "nosuch"], "No such command 'nosuch'"), (["--sed"], "No such option: --sed")]


def _check(res, args, expected):
    err = res.stderr
    assert res.exit_code == 2, (args, res.output)
    assert "lorakit bug" not in err and "internal error" not in err and "Traceback" not in err, err
    usage = next(line for line in err.splitlines() if line.startswith("Usage: "))
    words = [a for a in args if a in {"sd", *(c[-1] for c in COMMANDS)}][:2]
    assert " ".join(words) in usage, (usage, words)
    error = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and expected in error[0], err
    assert err.endswith("\n")


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_unknown_option_on_every_command(command):
    res = runner.invoke(app, [*command, "--nonexistent-option", "x"])
    _check(res, command, "No such option: --nonexistent-option")


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_command_lines(args, expected):
    _check(runner.invoke(app, args), args, expected)


def test_usage_error_through_the_real_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-m", "lorakit", "convert", "a", "b", "-o", "x"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert lines[0].startswith("Usage: ") and "convert [OPTIONS]" in lines[0]
    assert lines[-1] == "Error: No such option: -o" and res.stderr.endswith("Error: No such option: -o\n")
    assert "bug" not in res.stderr


@pytest.mark.parametrize("command", [[], ["sd"], *COMMANDS], ids=lambda c: " ".join(c) or "lorakit")
def test_help_shows_flags_without_a_value(command):
    res = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output, res.output
    assert "--help" in res.output
