"""Base-model checkpoints for merge/extract: a diffusers model folder or one part's safetensors file.

A folder is a diffusers pipeline (``unet/`` or ``transformer/``, ``text_encoder*/`` subfolders) or one
model folder (``config.json`` + ``*.safetensors``); a single file's part is guessed from its names
(CLIP, a FLUX.1/SD3 transformer in diffusers or original names, else a U-Net). Writing copies the source layout to a new
location and replaces only the weight files, atomically; the source is never modified.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..formats._io import atomic_dir, read_json, read_safetensors, write_safetensors
from ..formats.errors import LoraFileError
from ..formats.lorafile import Naming
from ..formats.sd_keys import layout_from_config

PARTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
#: key prefixes of FLUX.1/SD3 transformer weights (diffusers, original and ComfyUI names)
DIT_KEYS = ("transformer_blocks.", "single_transformer_blocks.", "double_blocks.", "single_blocks.", "joint_blocks.",
            "model.diffusion_model.")


def _files(folder: Path) -> list[Path]:
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".ckpt", ".pt"))
        hint = f" It has pickle files {pickles}; convert them to safetensors first." if pickles else ""
        raise FileNotFoundError(f"{folder} has no .safetensors weights.{hint}")
    return found


def _guess_part(sd: dict) -> str:
    if any(k.startswith("text_model.") for k in sd):
        return "text_encoder"
    return "transformer" if any(k.startswith(DIT_KEYS) for k in sd) else "unet"


def read_checkpoint(path, part: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{part: state dict}; a single file's part is ``part`` or guessed from its keys."""
    path = Path(path)
    if path.is_file():
        sd, _ = read_safetensors(path)
        return {part or _guess_part(sd): sd}
    if not path.is_dir():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    subs = [p for p in PARTS if (path / p).is_dir()]
    if subs:
        return {p: _merge(read_safetensors(f)[0] for f in _files(path / p)) for p in subs}
    sd = _merge(read_safetensors(f)[0] for f in _files(path))
    return {part or _guess_part(sd): sd}


def _merge(dicts) -> dict:
    out = {}
    for d in dicts:
        out.update(d)
    return out


def naming_for(path) -> Naming:
    """kohya naming for LoRAs of this checkpoint: SAI names and te1/te2 for SDXL-style U-Nets."""
    cfg_file = Path(path) / "unet" / "config.json"
    if not cfg_file.is_file():
        cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        return Naming()
    cfg = read_json(cfg_file)
    if not isinstance(cfg, dict):
        raise LoraFileError(cfg_file, f"found {type(cfg).__name__}; expected a JSON object (a diffusers config).")
    if cfg.get("addition_embed_type") == "text_time":
        return Naming("sai", True, layout_from_config(cfg))
    return Naming()


def write_checkpoint(src, dst, new: dict[str, dict[str, torch.Tensor]], overwrite: bool = False) -> Path:
    """Write ``new`` in the layout of checkpoint ``src`` at ``dst`` (a new file or folder, written whole or not at all)."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"output {dst} is the input checkpoint; choose a new path (inputs are never overwritten).")
    if src.is_file():
        (sd,) = new.values()
        write_safetensors(dst, sd, read_safetensors(src)[1] or None)
        return dst
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; choose a new output folder (or pass --overwrite).")
    subs = [p for p in PARTS if (src / p).is_dir()]
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.safetensors"), dirs_exist_ok=True)
        for part, sd in new.items():
            folder = src / part if subs else src
            for f in _files(folder):  # keep the shard layout: each tensor goes back to the file it came from
                keys, meta = read_safetensors(f)
                write_safetensors(tmp / f.relative_to(src), {k: sd[k] for k in keys}, meta or None)
    return dst
