"""``lorakit validate sd.yaml``: every problem at once — config values, the dataset (unreadable images,
images below the smallest bucket, empty captions, folders without a repeat prefix), missing model
files, a bucket step the model family does not allow, a starting LoRA of another family — then the
bucket table and the step count, without loading any weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ...train.checks import device_kind
from .config import parse
from .dataset import build_dataset
from .dit import DIT_FAMILIES, dit_family_of_dir
from .dit import bucket_step as dit_bucket_step
from .dit_config import family_problems
from .family import FAMILIES, model_bucket_step

WEIGHTS = ("*.safetensors", "*.bin")
WEIGHTED = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


def model_problems(path: str, config: str | None) -> tuple[list[str], str | None]:
    """(problems, family) of a local model from its configs: every component folder model_index.json
    names needs its config and weights."""
    from ...sd.pipeline import detect_family

    root = Path(path)
    if not root.exists():
        return [f"model.path={path!r}: not found."], None
    cfg_dir = Path(config) if root.is_file() and config else root
    index = cfg_dir / "model_index.json"
    if not index.is_file():
        return [f"{cfg_dir}: no model_index.json; expected a diffusers pipeline directory "
                "(save one with pipe.save_pretrained(dir))."], None
    e = []
    parts = {k for k, v in json.loads(index.read_text()).items() if isinstance(v, list) and v[0] is not None}
    for part in sorted(parts):
        folder = cfg_dir / part
        if not folder.is_dir():
            e.append(f"{cfg_dir}: model_index.json names {part!r} but there is no {part}/ folder.")
        elif part in WEIGHTED and root.is_dir():
            if not (folder / "config.json").is_file():
                e.append(f"{folder}: config.json is missing.")
            if not any(folder.glob(w) for w in WEIGHTS):
                e.append(f"{folder}: no weights (*.safetensors); the model is incomplete.")
    dit = dit_family_of_dir(cfg_dir)
    if dit is not None:
        if not (cfg_dir / "transformer" / "config.json").is_file():
            e.append(f"{cfg_dir}: transformer/config.json is missing.")
        return e, dit
    unet_cfg = cfg_dir / "unet" / "config.json"
    if not unet_cfg.is_file():
        return e + [f"{cfg_dir}: unet/config.json is missing; the family cannot be told."], None
    sched = cfg_dir / "scheduler" / "scheduler_config.json"
    family = detect_family(unet_config=json.loads(unet_cfg.read_text()),
                           scheduler_config=json.loads(sched.read_text()) if sched.is_file() else {})
    return e, family


def bucket_table(batches) -> str:
    """The bucket table users check before training: resolution, images, samples (with repeats), batches."""
    rows = [f"{'resolution':>12} {'images':>7} {'samples':>8} {'batches':>8}"]
    rows += [f"{r['resolution']:>12} {r['images']:>7} {r['samples']:>8} {r['batches']:>8}" for r in batches.table()]
    return "\n".join(rows)


def lora_family_problems(path: str, family: str) -> list[str]:
    """A starting LoRA made for another family than the model (the usual 'lora key not loaded')."""
    from ...formats.sd_io import read_lora

    try:
        lf = read_lora(path)
    except (KeyError, ValueError) as exc:
        return [f"network.network_weights={path}: {exc}"]
    want, have = lf.family(), (DIT_FAMILIES.get(family) or FAMILIES[family]).lora_family
    if want is not None and want != have:
        return [f"network.network_weights={path} is a LoRA for {want.upper()} but the model is {have.upper()}; "
                "LoRAs only continue on the family they were trained for."]
    return []


def bucket_step(path: str, config: str | None, family: str | None) -> int | None:
    """The model's bucket step from its unet/vae configs (see ``model_bucket_step``), else the family's;
    ``None`` when the model could not be read (then nothing that depends on it is checked)."""
    root = Path(path)
    cfg_dir = Path(config) if root.is_file() and config else root
    dit = family in DIT_FAMILIES
    try:
        model, vae = (json.loads((cfg_dir / part / "config.json").read_text())
                      for part in ("transformer" if dit else "unet", "vae"))
        return dit_bucket_step(model, vae) if dit else model_bucket_step(model, vae)
    except (OSError, ValueError, KeyError, TypeError):
        return 16 if dit else FAMILIES[family].bucket_step if family else None


def validate(data: dict) -> tuple[list[str], str]:
    """(every problem, a report with the bucket table and the steps) for an sd.yaml mapping."""
    cfg, errors = parse(data)
    report: list[str] = []
    family = None
    if cfg.model.path:
        found, family = model_problems(cfg.model.path, cfg.model.config)
        errors += found
        want = cfg.model.family
        if family and want != "auto" and want.split("-")[0] != family.split("-")[0]:
            errors.append(f"model.family={want!r} but {cfg.model.path} is an {family} model.")
        if family and want != "auto":
            family = want
        if family and want == "auto":  # a configured family was checked while parsing
            errors += family_problems(cfg, family)
        if family in DIT_FAMILIES and cfg.train.blocks_to_swap and device_kind(cfg.model.device) != "cuda":
            errors.append(f"train.blocks_to_swap={cfg.train.blocks_to_swap}: block swap moves blocks between CPU "
                          "memory and a GPU, and this run has no CUDA device; remove it.")
        if family and cfg.network.network_weights and Path(cfg.network.network_weights).is_file():
            errors += lora_family_problems(cfg.network.network_weights, family)
    step = bucket_step(cfg.model.path, cfg.model.config, family)
    t = cfg.train
    batches = build_dataset(cfg.data, batch_size=t.batch_size, seed=t.seed, bucket_step=step, scan_only=True)
    errors += [p for p in batches.problems if p not in errors]
    if family:
        report.append(f"model: {cfg.model.path} ({family}, bucket step {step})")
    elif step is None:
        report.append(f"model: {cfg.model.path or '(not set)'} could not be read (see the problems), so the bucket "
                      "settings were not checked against it.")
    if batches.datasets and not batches.problems:
        report += dataset_report(batches, t)
    return errors, "\n".join(report)


def dataset_report(batches, t) -> list[str]:
    """The bucket table, how the steps per epoch come about, the optimizer steps and notes (``t``: the
    ``train`` section; ``lorakit ui``'s bucket preview shows the same lines)."""
    per_epoch = len(batches) // max(t.grad_accum, 1)
    total = t.max_steps if t.max_steps is not None else max(1, math.ceil(t.epochs * per_epoch))
    steps = (f"optimizer steps: {per_epoch} per epoch x {t.epochs:g} epochs = {total}"
             if t.max_steps is None else f"optimizer steps: {total} (train.max_steps)")
    return [bucket_table(batches), batches.explain_steps(), steps] + [f"note: {n}" for n in batches.notes]
