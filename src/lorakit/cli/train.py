"""``lorakit train | validate | predict | generate | merge | quickstart``: thin layers over
:mod:`lorakit.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import app
from ._checks import check_adapters, check_quickstart, check_quickstart_out, check_run_dir
from ._checks import is_quickstart as _is_quickstart
from ._errors import fail

console = Console(highlight=False)

SET_HELP = ("Override a config value: --set section.key=value, or a deeper path such as "
            "quickstart.methods.lora.train.lr=3.0e-3 (value parsed as YAML). Repeatable.")
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)]  # noqa: UP045
AdapterOpt = Annotated[Optional[list[str]],  # noqa: UP045
                       typer.Option("--adapter", "-a", help="Adapter dir, or dir:strength. Repeatable.")]


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
          resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")] = False,
          overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished run in output_dir.")] = False):
    """Train an adapter (or the head, or the full model) as CONFIG says. Under torchrun: data-parallel."""
    from ..config import ConfigError
    from ..train import load_config, run

    try:
        cfg = load_config(config, set_ or [])
    except ConfigError as exc:
        fail(f"{exc}\nRun `lorakit validate {config}` after fixing, before training.")
    check_run_dir(cfg.train.output_dir, resume, overwrite)
    run(cfg, resume=resume)


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="Run config (YAML).")], set_: SetOpt = None,
             nproc_per_node: Annotated[Optional[int], typer.Option(  # noqa: UP045
                 "--nproc-per-node", min=1, help="Processes per node it will run on (torchrun's option; default: "
                 "LOCAL_WORLD_SIZE or 1).")] = None,
             nnodes: Annotated[Optional[int], typer.Option(  # noqa: UP045
                 "--nnodes", min=1, help="Nodes it will run on (default: WORLD_SIZE / processes per node).")] = None):
    """Check CONFIG without training: every problem at once, each with its key and a fix (for SD configs
    also the dataset, the model files, the bucket table and the step count), then the run's processes
    (GPUs per node, global batch, steps) and the memory each process needs (text and diffusion runs).

    A quickstart config (one with a ``quickstart`` section) is checked for every method it runs."""
    from ..config import ConfigError
    from ..train.config import from_dict, load_data, validate_data
    from ..train.plan import plan, processes

    if _is_quickstart(config):
        names = check_quickstart(config, set_ or [])
        console.print(f"[green]ok[/]: {config} is a valid quickstart config (methods {', '.join(names)})")
        return
    data = load_data(config, set_ or [])
    name, problems, report = validate_data(data)
    if not problems:
        more, text = plan(name, from_dict(data), *processes(nproc_per_node, nnodes))
        problems, report = more, "\n".join(r for r in (report, text) if r)
    multiline = "\n" in report
    if multiline:
        console.print(report, markup=False, soft_wrap=True)  # tables: never wrapped
    if problems:
        fail(str(ConfigError(problems, str(config))))
    console.print(f"[green]ok[/]: {config} is valid ({report if report and not multiline else f'task {name}'})")


@app.command()
def predict(base: Annotated[str, typer.Argument(help="Base model directory (or pip:PACKAGE/dir).")],
            texts: Annotated[list[str], typer.Argument(help="Texts to classify.")],
            adapter: AdapterOpt = None,
            top_k: Annotated[int, typer.Option(help="Labels shown per text.")] = 1):
    """Classify TEXTS with BASE plus one or more adapters."""
    from rich.table import Table

    from ..tasks.text.infer import load_with_adapters
    from ..tasks.text.infer import predict as _predict

    adapters = check_adapters(_adapters(adapter or []), "classification")
    model, tok, labels = load_with_adapters(base, adapters, task="classification")
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

    adapters = check_adapters(_adapters(adapter or []), "causal_lm")
    model, tok, _ = load_with_adapters(base, adapters, task="causal_lm")
    for prompt, text in zip(prompts, _generate(model, tok, prompts, max_new_tokens, temperature, chat), strict=True):
        console.print(f"[bold]{prompt}[/]{text}")


@app.command()
def merge(base: Annotated[str, typer.Argument(help="Base Hugging Face model directory.")],
          adapter: Annotated[list[str], typer.Argument(help="Adapter dir(s), optionally dir:strength.")],
          out: Annotated[Path, typer.Option("--out", "-o", help="New directory for the merged model.")],
          dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
          overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False):
    """BASE + ADAPTER(s) -> a standard Hugging Face model directory with the adapters merged in."""
    import shutil

    from ..formats._io import atomic_dir, check_output
    from ..tasks.text.infer import merge_to_model

    if dtype not in ("float32", "bfloat16", "float16"):
        fail(f"--dtype {dtype!r}: expected float32, bfloat16 or float16.")
    check_output(out, kind="dir", overwrite=overwrite, inputs=[Path(base)])
    adapters = check_adapters(_adapters(adapter or []), None)
    with atomic_dir(out) as tmp:  # written whole or not at all
        shutil.rmtree(tmp)
        merge_to_model(base, adapters, tmp, dtype)
    path = out
    console.print(f"[green]merged model written to {path}[/] (load it with transformers' from_pretrained)")


@app.command()
def quickstart(config: Annotated[Optional[Path], typer.Option(  # noqa: UP045  (typer needs Optional here)
                   "--config", "-c", help="Quickstart YAML (default: the copy of examples/quickstart.yaml).")] = None,
               set_: SetOpt = None,
               out: Annotated[Optional[Path], typer.Option(  # noqa: UP045
                   "--out", "-o", help="Output directory (default train.output_dir).")] = None,
               overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier quickstart's results.")]
               = False):
    """Fine-tune all-MiniLM-L6-v2 on Home Assistant intents: head only vs LoRA vs full, in one table."""
    from ..tasks.text.quickstart import DEFAULT_CONFIG
    from ..tasks.text.quickstart import quickstart as _quickstart

    check_quickstart(config or DEFAULT_CONFIG, set_ or [])  # every method's config, before writing any data
    check_quickstart_out(config or DEFAULT_CONFIG, set_ or [], out, overwrite)
    try:
        _quickstart(config, set_ or [], out, console)
    except ImportError as exc:
        fail(f"{exc}\nThe quickstart needs: pip install 'lorakit[quickstart]'")
