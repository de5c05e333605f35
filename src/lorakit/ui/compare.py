"""Comparing epochs and strengths, and generating: jobs that run ``lorakit sd grid`` and ``lorakit sd generate``.

The epoch × strength grid of a run is A1111's X/Y/Z plot over the run's saved files: X ``LoRA strength``,
Y ``LoRA file`` (one row per saved epoch, the final file last), optional Z ``Seed`` or ``Prompt S/R``.
The grid PNG (labelled axes) and each cell (``<grid>-cells/NNNNN-cellX-Y-Z.png``, with its infotext)
are written by ``lorakit sd grid`` itself; the UI keeps the axes beside them (``<grid>.json``) to map
a click on the grid to its cell.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from pydantic import BaseModel, Field

from .runner import lorakit_argv
from .runs import launch_config, lora_files
from .workspace import Workspace, check_name

CELL = re.compile(r"^\d{5}-cell(\d+)-(\d+)-(\d+)\.png$")


class GridRequest(BaseModel):
    files: list[str] = Field(default_factory=list)
    """Stems of the run's saved files (rows); empty: all of them."""
    strengths: list[float] = Field(default_factory=lambda: [0.0, 0.5, 0.75, 1.0])
    prompt: str = ""
    negative: str = ""
    z_type: str = ""
    """``""``, ``Seed`` or ``Prompt S/R``."""
    z_values: list[str] = Field(default_factory=list)
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "Euler a"
    seed: int = 1
    width: int = 512
    height: int = 512


class GenerateRequest(BaseModel):
    model: str
    prompt: str
    negative: str = ""
    sampler: str = "Euler a"
    steps: int = 20
    cfg: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512
    count: int = 1


def _csv(values) -> str:
    """Axis values as ``lorakit sd grid`` reads them (CSV; values holding commas or quotes are quoted)."""
    out = []
    for v in values:
        text = f"{v:g}" if isinstance(v, float) else str(v)
        out.append('"' + text.replace('"', '""') + '"' if any(c in text for c in ',"') else text)
    return ", ".join(out)


def _run(ws: Workspace, run: str) -> Path:
    check_name(run, "run")
    return ws.resolve(f"runs/{run}", must_exist=True)


def info(ws: Workspace, run: str) -> dict:
    """What the compare page offers for a run: its saved files, the default prompt and the grids made."""
    from ..sd.sample_prompts import read_prompt_file

    run_dir = _run(ws, run)
    cfg = launch_config(run_dir)
    name = (cfg.get("train") or {}).get("output_name", "lora")
    prompt = {"prompt": f"<lora:{name}:1>", "width": 512, "height": 512, "steps": 20, "cfg": 7.0, "seed": 1}
    prompts_file = (cfg.get("sample") or {}).get("prompts")
    if prompts_file:
        try:
            first = read_prompt_file(ws.root / prompts_file if not Path(prompts_file).is_absolute() else prompts_file)[0]
            prompt = {"prompt": f"{first.prompt} <lora:{name}:1>", "negative": first.negative, "width": first.width,
                      "height": first.height, "steps": first.steps, "cfg": first.cfg,
                      "seed": first.seed if first.seed is not None else 1}
        except (OSError, ValueError, IndexError):
            pass
    grids = []
    for meta in sorted((run_dir / "compare").glob("grid-*.json")):
        grids.append(grid_state(ws, meta))
    return {"run": run, "files": [p.stem for p in lora_files(run_dir)], "default": prompt, "grids": grids,
            "model": (cfg.get("model") or {}).get("path")}


def grid_state(ws: Workspace, meta_path: Path) -> dict:
    meta = json.loads(meta_path.read_text())
    png = meta_path.with_suffix(".png")
    cells_dir = meta_path.with_name(f"{png.stem}-cells")
    cells = {}
    if cells_dir.is_dir():
        for p in cells_dir.iterdir():
            m = CELL.match(p.name)
            if m:
                cells[f"{m[1]}-{m[2]}-{m[3]}"] = ws.rel(p)
    return {**meta, "png": ws.rel(png) if png.is_file() else None, "cells": cells}


def grid_job(ws: Workspace, run: str, req: GridRequest) -> tuple[list[str], Path, dict]:
    """(argv, grid PNG, meta) of a ``lorakit sd grid`` job over the run's files."""
    run_dir = _run(ws, run)
    cfg = launch_config(run_dir)
    model = (cfg.get("model") or {}).get("path")
    if not model:
        raise ValueError(f"runs/{run} has no launch.yaml with model.path; compare needs the run's base model.")
    saved = [p.stem for p in lora_files(run_dir)]
    files = req.files or saved
    unknown = [f for f in files if f not in saved]
    if unknown or not files:
        raise ValueError(f"files {unknown or files}: expected saved files of runs/{run}: {', '.join(saved) or 'none yet'}.")
    if not req.strengths or len(req.strengths) > 12 or len(files) > 40:
        raise ValueError("expected 1 to 12 strengths and at most 40 files.")
    name = (cfg.get("train") or {}).get("output_name", files[-1])
    prompt = req.prompt or f"<lora:{files[-1]}:1>"
    if "<lora:" not in prompt:
        prompt += f" <lora:{name}:1>"
    argv = lorakit_argv("sd", "grid", str(model), prompt, "-n", req.negative,
                        "--x", f"LoRA strength: {_csv(req.strengths)}", "--y", f"LoRA file: {_csv(files)}",
                        "--lora-dir", f"runs/{run}", "--sampler", req.sampler, "--steps", str(req.steps),
                        "--cfg", f"{req.cfg:g}", "--seed", str(req.seed), "--size", f"{req.width}x{req.height}")
    if (cfg.get("model") or {}).get("config"):
        argv += ["--config", str(cfg["model"]["config"])]
    z_labels = []
    if req.z_type:
        if req.z_type not in ("Seed", "Prompt S/R") or not req.z_values:
            raise ValueError("z_type: expected 'Seed' or 'Prompt S/R' with z_values.")
        argv += ["--z", f"{req.z_type}: {_csv(req.z_values)}"]
        z_labels = [f"{req.z_type}: {v}" for v in req.z_values]
    folder = run_dir / "compare"
    folder.mkdir(exist_ok=True)
    n = 1 + max((int(p.stem.split("-")[1]) for p in folder.glob("grid-*.json")), default=0)
    out = folder / f"grid-{n}.png"
    meta = {"x": [f"strength {s:g}" for s in req.strengths], "y": files, "z": z_labels, "prompt": prompt,
            "time": time.time(), "n": n}
    ws.write_text(out.with_suffix(".json"), json.dumps(meta))
    return argv + ["-o", ws.rel(out)], out, meta


def lora_names(ws: Workspace) -> dict:
    """LoRA file names ``<lora:name:w>`` resolves in the workspace (loras/ and runs/), duplicates flagged."""
    names: dict[str, list[str]] = {}
    for top in ("loras", "runs"):
        for p in sorted((ws.root / top).rglob("*.safetensors")):
            if not any(part.startswith(("checkpoint-", ".")) for part in p.relative_to(ws.root).parts):
                names.setdefault(p.stem, []).append(ws.rel(p))
    return {"loras": [{"name": k, "paths": v, "ambiguous": len(v) > 1} for k, v in sorted(names.items())]}


def generate_job(ws: Workspace, configs, req: GenerateRequest) -> tuple[list[str], Path, dict]:
    model = configs.model_path(req.model)
    if not req.prompt.strip():
        raise ValueError("prompt: empty; write what to draw (A1111 syntax, <lora:name:0.8> for LoRAs).")
    if not 1 <= req.count <= 16:
        raise ValueError(f"count={req.count}: expected 1 to 16 images.")
    out = ws.outputs / time.strftime("%Y%m%d-%H%M%S")
    while out.exists():
        out = out.with_name(out.name + "+")
    out.mkdir(parents=True)
    argv = lorakit_argv("sd", "generate", str(model), req.prompt, "-n", req.negative, "--count", str(req.count),
                        "-o", ws.rel(out), "--lora-dir", ".", "--sampler", req.sampler, "--steps", str(req.steps),
                        "--cfg", f"{req.cfg:g}", "--seed", str(req.seed), "--size", f"{req.width}x{req.height}")
    return argv, out, {"outputs": ws.rel(out), "count": req.count}
