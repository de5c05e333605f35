"""``lorakit sd generate`` and ``lorakit sd grid``: images from A1111-syntax prompts with stacked LoRAs.

Thin layer over :mod:`lorakit.sd.generate` and :mod:`lorakit.sd.xyz`; images are PNGs carrying A1111's
``parameters`` infotext, written atomically, never over an existing file unless ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from . import app
from ._errors import err, fail

console = Console(emoji=False, highlight=False)
sd_app = typer.Typer(no_args_is_help=True, help="Stable Diffusion: generate images and X/Y/Z grids with LoRAs.")
app.add_typer(sd_app, name="sd")

DTYPES = ("float32", "float16", "bfloat16")
DEVICES = "auto, cpu, cuda, cuda:N (N = GPU index), mps, xpu"
#: what a failing generation raises for bad input (the message says what and how to fix it)
ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError)


@contextlib.contextmanager
def _warnings_on_stderr():
    """Library warnings (an ignored <hypernet:...> tag, a VAE retried in float32) as ``warning:`` lines on stderr."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *args, **kwargs: err.print(f"[yellow]warning:[/] {escape(str(message))}")
        yield


def _size(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"--size {text!r}: expected WIDTHxHEIGHT such as 512x768.") from None
    return w, h


def _device(device: str) -> str:
    """A torch device name, checked before any model is loaded."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        fail(f"--device {device!r}: expected one of {DEVICES}.")
    if kind == "cuda" and not torch.cuda.is_available():
        fail(f"--device {device}: this machine has no usable CUDA GPU; use --device cpu (or auto).")
    return device


def _load(model: Path, config, family, dtype, device):
    import torch

    from ..sd.pipeline import load_pipeline

    if dtype not in DTYPES:
        raise typer.BadParameter(f"--dtype {dtype!r}: expected one of {DTYPES}.")
    return load_pipeline(model, config=config, family=family, dtype=getattr(torch, dtype), device=_device(device))[0]


def _common(steps, cfg, seed, sampler, schedule, size, clip_skip, lora_dir, embeddings, syntax, emphasis,
            guidance=None, shift=None) -> dict:
    width, height = _size(size)
    if cfg is not None and not math.isfinite(cfg):
        fail(f"--cfg {cfg}: the CFG scale must be a finite number such as 7.")
    return {"width": width, "height": height, "steps": steps, "cfg_scale": cfg, "seed": seed, "sampler": sampler,
            "schedule": schedule, "clip_skip": clip_skip, "lora_dir": lora_dir or None, "embeddings": embeddings,
            "syntax": syntax, "emphasis": emphasis, "guidance": guidance, "shift": shift}


MODEL = typer.Argument(..., help="local diffusers directory or single-file .safetensors checkpoint")
PROMPT = typer.Argument(..., help="prompt in A1111 syntax: (emphasis:1.2), \\[less], BREAK, <lora:name:te:unet>, "
                        "[from:to:when], [a|b], AND (docs/sd-generation.md)")
OPTS = {
    "negative": typer.Option("", "-n", "--negative", help="negative prompt (embedding names work here)"),
    "config": typer.Option(None, help="local diffusers config dir for a single-file checkpoint"),
    "family": typer.Option("auto", help="auto | sd1 | sd2 | sd2-v | sdxl | flux1 | sd3"),
    "lora_dir": typer.Option(None, "--lora-dir", help="folder searched (recursively) for <lora:name> files; repeat "
                             "for several. Prompts can name no file outside them"),
    "embeddings": typer.Option(None, "--embeddings", help="folder of textual-inversion embeddings"),
    "sampler": typer.Option(None, help="A1111 sampler name (DPM++ 2M, Euler a, DDIM, ...; FLUX.1/SD3: Euler, Heun); "
                                       "default Euler a (SD), Euler (FLUX.1/SD3)"),
    "schedule": typer.Option(None, help="schedule type: Karras, Exponential, Beta, SGM Uniform, ..."),
    "steps": typer.Option(20, help="sampling steps"),
    "cfg": typer.Option(None, help="CFG scale (default 7; FLUX.1: 1 = off, >1 is true CFG with the negative)"),
    "guidance": typer.Option(None, help="FLUX.1-dev distilled guidance (Forge's Distilled CFG Scale; default 3.5)"),
    "shift": typer.Option(None, help="FLUX.1/SD3: the flow-match schedule's shift (default: the model's own)"),
    "seed": typer.Option(-1, help="seed (-1: random); image i uses seed + i"),
    "size": typer.Option(None, help="WIDTHxHEIGHT [default: the model's native size, 512 for SD 1.5, 1024 for SDXL]"),
    "clip_skip": typer.Option(None, "--clip-skip", help="A1111 Clip skip (1 = last layer, 2 = penultimate)"),
    "syntax": typer.Option("a1111", help="prompt weighting: a1111 | comfyui"),
    "emphasis": typer.Option("Original", help="A1111 emphasis: Original | 'No norm'"),
    "dtype": typer.Option("float32", help=f"model dtype: {' | '.join(DTYPES)}"),
    "device": typer.Option("auto", help="auto | cpu | cuda | cuda:N | mps"),
    "overwrite": typer.Option(False, "--overwrite", help="replace existing output files"),
}


@sd_app.command("generate")
def generate_cmd(model: Path = MODEL, prompt: str = PROMPT, negative: str = OPTS["negative"],
                 count: int = typer.Option(1, help="number of images"),
                 out: Path = typer.Option(Path("outputs"), "-o", "--out", help="output folder (NNNNN-seed.png)"),
                 config: Path = OPTS["config"], family: str = OPTS["family"], lora_dir: list[Path] = OPTS["lora_dir"],
                 embeddings: Path = OPTS["embeddings"], sampler: str = OPTS["sampler"],
                 schedule: str = OPTS["schedule"], steps: int = OPTS["steps"], cfg: float = OPTS["cfg"],
                 seed: int = OPTS["seed"], size: str | None = OPTS["size"], clip_skip: int = OPTS["clip_skip"],
                 syntax: str = OPTS["syntax"], emphasis: str = OPTS["emphasis"], dtype: str = OPTS["dtype"],
                 device: str = OPTS["device"], guidance: float = OPTS["guidance"], shift: float = OPTS["shift"]):
    """Generate images; each PNG carries A1111's infotext (Civitai reads its Lora and TI hashes)."""
    from ..sd.generate import generate_images
    from ..sd.infotext import next_free_name, save_png

    kwargs = _common(steps, cfg, seed, sampler, schedule, size, clip_skip, lora_dir, embeddings, syntax, emphasis,
                     guidance, shift)
    try:
        with _warnings_on_stderr():
            pipe = _load(model, config, family, dtype, device)
            images = generate_images(pipe, prompt, negative, count=count, **kwargs)
    except ERRORS as exc:
        fail(exc)
    for image in images:
        seed_used = image.info["parameters"].split("Seed: ")[1].split(",")[0]
        path = save_png(image, next_free_name(out, seed_used))
        console.print(f"wrote {path}")


@sd_app.command("grid")
def grid_cmd(model: Path = MODEL, prompt: str = PROMPT, negative: str = OPTS["negative"],
             x: str = typer.Option(None, "--x", help="X axis, e.g. 'LoRA strength: 0.25-1 [4]'"),
             y: str = typer.Option(None, "--y", help="Y axis, e.g. 'Seed: 1-4'"),
             z: str = typer.Option(None, "--z", help="Z axis, e.g. 'LoRA file: cat-000004,cat-000008,cat'"),
             out: Path = typer.Option(Path("grid.png"), "-o", "--out", help="grid PNG; cells go to <stem>-cells/"),
             config: Path = OPTS["config"], family: str = OPTS["family"], lora_dir: list[Path] = OPTS["lora_dir"],
             embeddings: Path = OPTS["embeddings"], sampler: str = OPTS["sampler"],
             schedule: str = OPTS["schedule"], steps: int = OPTS["steps"], cfg: float = OPTS["cfg"],
             seed: int = OPTS["seed"], size: str | None = OPTS["size"], clip_skip: int = OPTS["clip_skip"],
             syntax: str = OPTS["syntax"], emphasis: str = OPTS["emphasis"], dtype: str = OPTS["dtype"],
             device: str = OPTS["device"], overwrite: bool = OPTS["overwrite"], guidance: float = OPTS["guidance"],
             shift: float = OPTS["shift"]):
    """X/Y/Z grid: Prompt S/R, Seed, Steps, CFG Scale, Sampler, Schedule type, Clip skip, LoRA strength, LoRA file.

    X across, Y down, one sub-grid per Z value; A1111 ranges (1-4, 1-10 (+2), 0-1 [5]). The model and
    each LoRA file load once; cells switch live adapters.
    """
    import random

    from ..formats._io import atomic_dir
    from ..sd.infotext import free_path, next_free_name, save_png
    from ..sd.xyz import Axis, xyz_grid

    cells_dir = out.with_name(f"{out.stem}-cells")
    try:
        if out.suffix.lower() != ".png":
            raise ValueError(f"--out {out}: the grid is a PNG file; give a path ending in .png.")
        free_path(out, overwrite)
        free_path(cells_dir, overwrite)
        axes = [Axis.parse(a) if a else None for a in (x, y, z)]
        if not any(axes):
            raise ValueError("give at least one axis (--x, --y or --z), e.g. --x 'Seed: 1-4'.")
        kwargs = _common(steps, cfg, seed, sampler, schedule, size, clip_skip, lora_dir, embeddings, syntax,
                         emphasis, guidance, shift)
        if kwargs["seed"] in (None, -1):  # one random seed for the whole grid, so cells differ only by axes
            kwargs["seed"] = random.randrange(2**32)
        with _warnings_on_stderr():
            pipe = _load(model, config, family, dtype, device)
            with atomic_dir(cells_dir) as staging:  # cells appear as they are made; a failure removes them

                def save_cell(image, index):
                    save_png(image, next_free_name(staging, "cell" + "-".join(str(i) for i in index)))

                result = xyz_grid(pipe, prompt, negative, x=axes[0], y=axes[1], z=axes[2], on_image=save_cell,
                                  **kwargs)
                save_png(result.image, out, overwrite=overwrite)
    except ERRORS as exc:
        fail(exc)
    n = sum(len(r) for g in result.cells for r in g)
    console.print(f"wrote {out} ({n} cells; each also in {cells_dir}/)")
