"""``lorakit train | validate | predict | generate | merge | quickstart``: thin layers over
:mod:`lorakit.train`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from . import app

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

SET_HELP = "Override a config value: --set section.key=value (value parsed as YAML). Repeatable."


def _fail(message: str, code: int = 1):
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _adapters(adapter: list[str]) -> list[tuple[str, float]]:
    """``path`` or ``path:strength`` (the strength after the last colon)."""
    out = []
    for item in adapter:
        path, sep, strength = item.rpartition(":")
        if sep and path and not Path(item).exists():
            try:
                out.append((path, float(strength)))
                continue
            except ValueError:
                pass
        out.append((item, 1.0))
    return out


@app.command()
def train(config: Path = typer.Argument(..., help="Run config (YAML); see examples/."),
          set_: list[str] = typer.Option([], "--set", help=SET_HELP),
          resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's latest checkpoint.")):
    """Train an adapter (or the head, or the full model) as CONFIG says. Under torchrun: data-parallel."""
    from ..config import ConfigError
    from ..train import NonFiniteLossError, load_config, run

    try:
        cfg = load_config(config, set_)
        run(cfg, resume=resume)
    except ConfigError as exc:
        _fail(f"{exc}\nRun `lorakit validate {config}` after fixing, before training.")
    except (NonFiniteLossError, FileNotFoundError, FileExistsError, ValueError, ImportError) as exc:
        _fail(str(exc))


@app.command()
def validate(config: Path = typer.Argument(..., help="Run config (YAML)."),
             set_: list[str] = typer.Option([], "--set", help=SET_HELP)):
    """Check CONFIG without training: every problem at once, each with its key and a fix."""
    from ..config import ConfigError
    from ..train import load_config

    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        _fail(str(exc))
    except FileNotFoundError as exc:
        _fail(str(exc))
    console.print(f"[green]ok[/]: {config} is valid (method {cfg.train.method}, task {cfg.model.task}, "
                  f"output {cfg.train.output_dir})")


@app.command()
def predict(base: str = typer.Argument(..., help="Base model directory (or pip:PACKAGE/dir)."),
            texts: list[str] = typer.Argument(..., help="Texts to classify."),
            adapter: list[str] = typer.Option([], "--adapter", "-a", help="Adapter dir, or dir:strength. Repeatable."),
            top_k: int = typer.Option(1, help="Labels shown per text.")):
    """Classify TEXTS with BASE plus one or more adapters."""
    from rich.table import Table

    from ..train.infer import load_with_adapters, predict as _predict

    try:
        model, tok, labels = load_with_adapters(base, _adapters(adapter), task="classification")
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    table = Table("text", "prediction")
    for text, preds in zip(texts, _predict(model, tok, labels, texts, top_k)):
        table.add_row(text, ", ".join(f"{label} ({p:.1%})" for label, p in preds))
    console.print(table)


@app.command()
def generate(base: str = typer.Argument(..., help="Base causal-LM directory."),
             prompts: list[str] = typer.Argument(..., help="Prompts."),
             adapter: list[str] = typer.Option([], "--adapter", "-a", help="Adapter dir, or dir:strength. Repeatable."),
             max_new_tokens: int = typer.Option(64),
             temperature: float = typer.Option(0.0, help="0 is greedy."),
             chat: bool = typer.Option(False, help="Wrap each prompt in the tokenizer's chat template.")):
    """Continue PROMPTS with BASE plus one or more adapters."""
    from ..train.infer import generate as _generate, load_with_adapters

    try:
        model, tok, _ = load_with_adapters(base, _adapters(adapter), task="causal_lm")
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    for prompt, text in zip(prompts, _generate(model, tok, prompts, max_new_tokens, temperature, chat)):
        console.print(f"[bold]{prompt}[/]{text}")


@app.command()
def merge(base: str = typer.Argument(..., help="Base Hugging Face model directory."),
          adapter: list[str] = typer.Argument(..., help="Adapter dir(s), optionally dir:strength."),
          out: Path = typer.Option(..., "--out", "-o", help="New directory for the merged model."),
          dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16")):
    """BASE + ADAPTER(s) -> a standard Hugging Face model directory with the adapters merged in."""
    from ..train.infer import merge_to_model

    try:
        path = merge_to_model(base, _adapters(adapter), out, dtype)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"[green]merged model written to {path}[/] (load it with transformers' from_pretrained)")


@app.command()
def quickstart(config: Path = typer.Option(None, "--config", "-c",
                                           help="Quickstart YAML (default: the copy of examples/quickstart.yaml)."),
               set_: list[str] = typer.Option([], "--set", help=SET_HELP),
               out: Path = typer.Option(None, "--out", "-o", help="Output directory (default train.output_dir).")):
    """Fine-tune all-MiniLM-L6-v2 on Home Assistant intents: head only vs LoRA vs full, in one table."""
    from ..config import ConfigError
    from ..train.quickstart import quickstart as _quickstart

    try:
        _quickstart(config, set_, out, console)
    except ImportError as exc:
        _fail(f"{exc}\nThe quickstart needs: pip install 'lorakit[quickstart]'")
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
