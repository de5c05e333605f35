"""The bucket preview: which bucket each image lands in and the crop the trainer takes, the bucket table,
buckets smaller than a batch, and the step count with its formula.

Every number comes from the trainer's own code: the dataset is scanned by ``build_dataset`` (kohya's
bucket list and assignment, reg balancing), the crop is ``images.crop_offsets`` (centred; with
``random_crop`` the place varies per epoch), and the report lines are ``validate``'s
(``dataset_report``), so they are the numbers ``lorakit validate`` prints for the same settings.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from ..tasks.diffusion.config import SDTrainArgs
from ..tasks.diffusion.dataset import DatasetArgs, build_dataset
from ..tasks.diffusion.dataset.images import crop_offsets
from ..tasks.diffusion.validate import bucket_step, dataset_report, model_problems
from .workspace import Workspace

DATA_KEYS = ("resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
             "bucket_no_upscale", "random_crop")
TRAIN_KEYS = ("batch_size", "epochs", "max_steps", "grad_accum", "seed")


def settings_from(config: dict | None) -> tuple[dict, dict, str | None]:
    """(data settings, train settings, model path) of a config mapping, defaults filled in."""
    config = config or {}
    data = {k: config.get("data", {}).get(k, getattr(DatasetArgs, k)) for k in DATA_KEYS if hasattr(DatasetArgs, k)}
    train = {k: config.get("train", {}).get(k, getattr(SDTrainArgs, k)) for k in TRAIN_KEYS}
    return data, train, (config.get("model") or {}).get("path")


def preview(ws: Workspace, dataset_root: Path, data: dict, train: dict, model_path: str | None = None) -> dict:
    """Buckets of ``dataset_root`` (``img/`` and ``reg/``) under ``data``/``train`` settings."""
    known = {f.name for f in fields(DatasetArgs)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown data keys {sorted(unknown)}; expected some of {', '.join(DATA_KEYS)}.")
    reg = dataset_root / "reg"
    # paths relative to the workspace, as a config names them: the report reads as validate's
    args = DatasetArgs(train_data_dir=ws.rel(dataset_root / "img"),
                       reg_data_dir=ws.rel(reg) if reg.is_dir() and any(p.is_dir() for p in reg.iterdir()) else None,
                       **{k: v for k, v in data.items() if k not in ("train_data_dir", "reg_data_dir")})
    t = SDTrainArgs(**{k: v for k, v in train.items() if k in TRAIN_KEYS})
    step, family = 64, None
    with ws.cwd():
        if model_path:
            _, family = model_problems(model_path, None)
            step = bucket_step(model_path, None, family) if family else 64
        batches = build_dataset(args, batch_size=t.batch_size, seed=t.seed, bucket_step=step, scan_only=True)
    out = {"problems": batches.problems, "notes": batches.notes, "bucket_step": step, "family": family,
           "report": "", "buckets": [], "images": [], "warnings": []}
    if batches.problems or not batches.datasets:
        return out
    out["report"] = "\n".join(dataset_report(batches, t))
    for row in batches.table():
        out["buckets"].append(row)
        if row["images"] < t.batch_size:
            out["warnings"].append(f"bucket {row['resolution']} has {row['images']} image(s), fewer than the batch size "
                                   f"{t.batch_size}: its batches are smaller (kohya trains them as they are; "
                                   "OneTrainer would drop them).")
    for ds in batches.datasets:
        for item in ds.items:
            (w, h), (rw, rh), (bw, bh) = item.size, item.resized, item.bucket
            left, top = crop_offsets(item.resized, item.bucket, None)
            sx, sy = w / rw, h / rh  # resized -> original pixels
            out["images"].append({
                "rel": (ws.root / item.path).relative_to(dataset_root).as_posix(), "size": [w, h], "bucket": [bw, bh],
                "resized": [rw, rh], "reg": item.is_reg, "repeats": item.num_repeats,
                # the crop in fractions of the original image (drawn over its thumbnail)
                "crop": [left * sx / w, top * sy / h, bw * sx / w, bh * sy / h]})
    return out
