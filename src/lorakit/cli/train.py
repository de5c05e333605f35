"""``lorakit train | validate | predict | generate | merge | quickstart``: thin layers over
:mod:`lorakit.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import app

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

SET_HELP = ("Override a config value: --set section.key=value, or a deeper path such as "
            "quickstart.methods.lora.train.lr=3.0e-3 (value parsed as YAML). Repeatable.")
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)]  # noqa: UP045
AdapterOpt = Annotated[Optional[list[str]],  # noqa: UP045
                       typer.Option("--adapter", "-a", help="Adapter dir, or dir:strength. Repeatable.")]


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
def train(config: Annotated[Path, typer.Argument(help="Run config (YAML); see examples/.")],
          set_: SetOpt = None,
          resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")] = False):
    """Train an adapter (or the head, or the full model) as CONFIG says. Under torchrun: data-parallel."""
    from ..config import ConfigError
    from ..train import NonFiniteLossError, load_config, run

    try:
        cfg = load_config(config, set_ or [])
        run(cfg, resume=resume)
    except ConfigError as exc:
        _fail(f"{exc}\nRun `lorakit validate {config}` after fixing, before training.")
    except (NonFiniteLossError, FileNotFoundError, FileExistsError, ValueError, ImportError) as exc:
        _fail(str(exc))


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="Run config (YAML).")], set_: SetOpt = None):
    """Check CONFIG without training: every problem at once, each with its key and a fix (for SD configs
    also the dataset, the model files, the bucket table and the step count)."""
    from ..config import ConfigError
    from ..train.config import load_data
    from ..train.task import get_task

    try:
        data = load_data(config, set_ or [])
        task = get_task(data.get("task") if isinstance(data, dict) else None)
        problems, report = task.validate(data) if isinstance(data, dict) else ([f"expected a mapping, got {data!r}"], "")
    except (ConfigError, FileNotFoundError) as exc:
        _fail(str(exc))
    multiline = "\n" in report
    if multiline:
        console.print(report, markup=False)
    if problems:
        _fail(str(ConfigError(problems, str(config))))
    console.print(f"[green]ok[/]: {config} is valid ({report if report and not multiline else f'task {task.name}'})")


@app.command()
def predict(base: Annotated[str, typer.Argument(help="Base model directory (or pip:PACKAGE/dir).")],
            texts: Annotated[list[str], typer.Argument(help="Texts to classify.")],
            adapter: AdapterOpt = None,
            top_k: Annotated[int, typer.Option(help="Labels shown per text.")] = 1):
    """Classify TEXTS with BASE plus one or more adapters."""
    from rich.table import Table

    from ..tasks.text.infer import load_with_adapters
    from ..tasks.text.infer import predict as _predict

    try:
        model, tok, labels = load_with_adapters(base, _adapters(adapter or []), task="classification")
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    table = Table("text", "prediction")
    for text, preds in zip(texts, _predict(model, tok, labels, texts, top_k), strict=True):
        table.add_row(text, ", ".join(f"{label} ({p:.1%})" for label, p in preds))
    console.print(table)


@app.command()
def generate(base: Annotated[str, typer.Argument(help="Base causal-LM directory.")],
             prompts: Annotated[list[str], typer.Argument(help="Prompts.")],
             adapter: AdapterOpt = None,
             max_new_tokens: int = 64,
             temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
             chat: Annotated[bool, typer.Option(help="Wrap each prompt in the tokenizer's chat template.")] = False):
    """Continue PROMPTS with BASE plus one or more adapters."""
    from ..tasks.text.infer import generate as _generate
    from ..tasks.text.infer import load_with_adapters

    try:
        model, tok, _ = load_with_adapters(base, _adapters(adapter or []), task="causal_lm")
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    for prompt, text in zip(prompts, _generate(model, tok, prompts, max_new_tokens, temperature, chat), strict=True):
        console.print(f"[bold]{prompt}[/]{text}")


@app.command()
def merge(base: Annotated[str, typer.Argument(help="Base Hugging Face model directory.")],
          adapter: Annotated[list[str], typer.Argument(help="Adapter dir(s), optionally dir:strength.")],
          out: Annotated[Path, typer.Option("--out", "-o", help="New directory for the merged model.")],
          dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32"):
    """BASE + ADAPTER(s) -> a standard Hugging Face model directory with the adapters merged in."""
    from ..tasks.text.infer import merge_to_model

    try:
        path = merge_to_model(base, _adapters(adapter or []), out, dtype)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"[green]merged model written to {path}[/] (load it with transformers' from_pretrained)")


@app.command()
def quickstart(config: Annotated[Optional[Path], typer.Option(  # noqa: UP045  (typer needs Optional here)
                   "--config", "-c", help="Quickstart YAML (default: the copy of examples/quickstart.yaml).")] = None,
               set_: SetOpt = None,
               out: Annotated[Optional[Path], typer.Option(  # noqa: UP045
                   "--out", "-o", help="Output directory (default train.output_dir).")] = None):
    """Fine-tune all-MiniLM-L6-v2 on Home Assistant intents: head only vs LoRA vs full, in one table."""
    from ..config import ConfigError
    from ..tasks.text.quickstart import quickstart as _quickstart

    try:
        _quickstart(config, set_ or [], out, console)
    except ImportError as exc:
        _fail(f"{exc}\nThe quickstart needs: pip install 'lorakit[quickstart]'")
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
