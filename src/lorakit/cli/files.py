"""LoRA file commands: ``convert``, ``inspect``, ``merge-loras``, ``resize``, ``extract``.

Each command is a thin layer over :mod:`lorakit.formats.sd_io` and :mod:`lorakit.tools`; all of
them write new files (atomically) and never modify their inputs. FLUX.1/SD3 files keep their
format unless ``--to`` says otherwise; a note is printed when fusing split q/k/v modules raised a rank.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..formats._io import check_output
from ..formats.sd_io import TARGETS, read_lora, write_lora
from ..tools import extract_lora, inspect_lora, merge_into_base, merge_loras, resize_lora
from ..tools.checkpoint import naming_for, read_checkpoint, write_checkpoint
from ..tools.merge import METHODS
from . import app
from ._errors import fail

console = Console()
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace an existing output (refused by default).")


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return [_finite(v) for v in obj] if isinstance(obj, list) else obj


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{what}={text!r}: expected comma-separated numbers such as 1,0.5") from None


FamilyOpt = typer.Option(None, help="flux1 | sd3: the family of a FLUX.1/SD3 file whose names fit both")


def _dit_out(lf, to: str | None) -> str:
    """Output format: ``to``, else (FLUX.1/SD3 files) the input's own style, else kohya."""
    if to is not None:
        if to not in TARGETS:
            fail(f"--to {to!r}: expected one of {', '.join(TARGETS)}.")
        return to
    return lf.source if lf.naming.dit and lf.source in TARGETS else "kohya"


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        console.print(f"note: {note}", soft_wrap=True, highlight=False)


@app.command("convert")
def convert_cmd(src: Path, dst: Path, to: str = typer.Option(..., help=f"target format: {' | '.join(TARGETS)}"),
                dtype: str = typer.Option(None, help="output precision: fp32, fp16 or bf16"),
                family: str = FamilyOpt, overwrite: bool = OverwriteOpt):
    """Convert a LoRA between formats (lossless): SD kohya <-> PEFT directory; FLUX.1/SD3 kohya <-> peft
    (diffusers) <-> comfy files. Fusing split q/k/v LoRAs for kohya/comfy may raise the rank (said in a note)."""
    to = _dit_out(None, to)
    lf = read_lora(src)
    check_output(dst, kind="dir" if to == "peft" and not lf.naming.dit else "file", overwrite=overwrite,
                 inputs=[src])
    notes = write_lora(lf, dst, to, dtype, family)
    console.print(f"wrote {dst} ({to}, {len(lf.modules)} modules read)")
    _print_notes(notes)


@app.command("inspect")
def inspect_cmd(file: Path, modules: bool = typer.Option(False, "--modules", help="list every module"),
                as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Format, model family, modules (rank/alpha/norm), metadata and health warnings of a LoRA file."""
    rep = inspect_lora(file)
    if as_json:
        data = {**rep.summary(), "metadata": rep.metadata, "warnings": rep.warnings, "notes": rep.notes,
                "module_list": [vars(m) for m in rep.modules] if modules else None}
        typer.echo(json.dumps(_finite(data), indent=2, default=str))  # NaN/Inf norms as null: valid JSON
        return
    for k, v in rep.summary().items():
        console.print(f"[bold]{k}[/bold]: {v}")
    shown = {k: (v if len(v) < 120 else v[:117] + "...") for k, v in rep.metadata.items()}
    if shown:
        console.print("[bold]metadata[/bold]:")
        for k in sorted(shown):
            console.print(f"  {k} = {shown[k]}")
    if modules:
        table = Table("module", "algo", "rank", "alpha", "scale", "‖ΔW‖", "dtype")
        for m in rep.modules:
            table.add_row(m.key, m.algo + ("+dora" if m.dora else ""), str(m.rank), f"{m.alpha}",
                          f"{m.scale:.4g}", f"{m.norm:.4g}", m.dtype)
        console.print(table)
    for note in rep.notes:
        console.print(f"[bold]note:[/bold] {escape(note)}")
    for w in rep.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")


@app.command("merge-loras")
def merge_loras_cmd(
    loras: list[Path], out: Path = typer.Option(..., "-o", "--out", help="output file or folder"),
    method: str = typer.Option("cat", help=f"{' | '.join(METHODS)} (LoRA+LoRA merges)"),
    weights: str = typer.Option(None, help="one weight (strength) per LoRA, comma-separated"),
    rank: int = typer.Option(None, help="target rank for svd/linear/ties/dare"),
    density: float = typer.Option(0.5, help="fraction kept by ties/dare"),
    seed: int = typer.Option(0, help="random seed for dare"),
    base: Path = typer.Option(None, help="merge into this base checkpoint (diffusers folder or safetensors) instead"),
    block_weight: list[str] = typer.Option(None, help="PREFIX=MULT, e.g. unet.down_blocks.1=0.5 (with --base)"),
    dtype: str = typer.Option(None, help="output precision: fp32, fp16 or bf16"),
    to: str = typer.Option(None, help="FLUX.1/SD3 output format: kohya | peft | comfy (default: the input's)"),
    family: str = FamilyOpt, overwrite: bool = OverwriteOpt,
):
    """Merge several LoRAs into one LoRA, or into a base checkpoint with per-LoRA strengths."""
    if not loras:
        fail("merge-loras: give at least one LoRA file.")
    kind = "dir" if base is not None and base.is_dir() else "file"
    check_output(out, kind=kind, overwrite=overwrite, inputs=loras + ([base] if base else []))
    w = _floats(weights, "--weights")
    blocks = {}
    for item in block_weight or []:
        prefix, sep, mult = item.partition("=")
        if not sep or not prefix:
            fail(f"--block-weight {item!r}: expected PREFIX=MULT, e.g. unet.down_blocks.1=0.5")
        blocks[prefix] = float(_floats(mult, "--block-weight")[0])
    if block_weight and base is None:
        fail("--block-weight applies when merging into a checkpoint (--base).")
    files = [read_lora(p) for p in loras]
    if base is not None:
        write_checkpoint(base, out, merge_into_base(read_checkpoint(base), files, w, blocks), overwrite=overwrite)
        console.print(f"wrote {out} (base + {len(files)} LoRA(s))")
        return
    merged = merge_loras(files, w, method, rank, density, seed)
    notes = write_lora(merged, out, _dit_out(files[0], to), dtype, family)
    console.print(f"wrote {out} ({method}, {len(merged.modules)} modules)")
    _print_notes(notes)


@app.command("resize")
def resize_cmd(src: Path, out: Path = typer.Option(..., "-o", "--out"),
               rank: int = typer.Option(None, help="new rank (the cap when --dynamic is given)"),
               dynamic: str = typer.Option(None, help="sv_ratio | sv_fro | sv_cumulative"),
               param: float = typer.Option(None, help="parameter of the dynamic method"),
               dtype: str = typer.Option(None, help="output precision: fp32, fp16 or bf16"),
               verbose: bool = typer.Option(False, "--verbose", help="retained energy per module"),
               to: str = typer.Option(None, help="FLUX.1/SD3 output format: kohya | peft | comfy (default: the "
                                                 "input's)"),
               family: str = FamilyOpt, overwrite: bool = OverwriteOpt):
    """Change a LoRA's rank by SVD, keeping its strength; reports the energy each module keeps."""
    check_output(out, overwrite=overwrite, inputs=[src])
    lf = read_lora(src)
    new, reports = resize_lora(lf, rank, dynamic, param)
    _print_notes(write_lora(new, out, _dit_out(lf, to), dtype, family))
    if verbose:
        for r in reports:
            console.print(f"{r.module}: rank {r.old_rank} -> {r.new_rank}, fro {r.fro_retained:.4f}, "
                          f"sum(S) {r.sum_retained:.4f}")
    worst = min(reports, key=lambda r: r.fro_retained) if reports else None
    mean = sum(r.fro_retained for r in reports) / max(len(reports), 1)
    console.print(f"wrote {out}: {len(reports)} modules, mean Frobenius retained {mean:.4f}"
                  + (f", lowest {worst.fro_retained:.4f} ({worst.module})" if worst else ""))


@app.command("extract")
def extract_cmd(base: Path, tuned: Path, out: Path = typer.Option(..., "-o", "--out"),
                rank: int = typer.Option(32, help="rank of Linear / 1x1 modules"),
                conv_rank: int = typer.Option(None, help="also extract k×k resnet convs at this rank"),
                energy: float = typer.Option(None, help="instead of a fixed rank: keep this fraction of ‖ΔW‖_F"),
                clamp_quantile: float = typer.Option(0.99, help="clamp factors at this quantile (1 = off)"),
                min_diff: float = typer.Option(0.0, help="skip modules whose max |ΔW| is at most this"),
                part: str = typer.Option(None, help="model part of single-file checkpoints (unet, transformer, "
                                                    "text_encoder; guessed from the names)"),
                dtype: str = typer.Option(None, help="output precision: fp32, fp16 or bf16"),
                to: str = typer.Option(None, help="FLUX.1/SD3 output format: kohya (default) | peft | comfy"),
                overwrite: bool = OverwriteOpt):
    """Extract a LoRA from the difference between a fine-tuned and a base model (truncated SVD)."""
    check_output(out, overwrite=overwrite, inputs=[base, tuned])
    lf, skipped = extract_lora(read_checkpoint(base, part), read_checkpoint(tuned, part),
                               rank=None if energy is not None else rank, conv_rank=conv_rank, energy=energy,
                               clamp_quantile_=clamp_quantile, min_diff=min_diff, naming=naming_for(base))
    if not lf.modules:
        fail(f"no module of {tuned} differs from {base} by more than --min-diff {min_diff} ({len(skipped)} compared); "
             "there is no LoRA to extract and nothing was written. Are these the right two checkpoints?")
    notes = write_lora(lf, out, _dit_out(lf, to), dtype)
    console.print(f"wrote {out}: {len(lf.modules)} modules" + (f", {len(skipped)} skipped (no change)" if skipped else ""))
    _print_notes(notes)
