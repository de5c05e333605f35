"""What a run directory shows the job page: progress (``status.json``), metrics rows (``metrics.jsonl``,
read incrementally), samples by sampling × prompt (``sample/<name>_<label>_<prompt>_<seed>.png``),
the saved LoRA files and checkpoints, and the launched config."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..train.checkpoint import list_checkpoints
from ..train.config import read_yaml
from ..train.control import read_status

SAMPLE = re.compile(r"^(?P<name>.+)_(?P<label>e\d{6}|\d{6})_(?P<index>\d{2})_(?P<seed>-?\d+)\.png$")
LAUNCH = "launch.yaml"


def read_metrics(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Rows of ``metrics.jsonl`` from byte ``offset`` on (whole lines only) and the offset after them.

    A file shorter than ``offset`` was rewritten (a resume drops rows past its checkpoint): read it again
    from the start; the caller replaces what it had."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            if f.tell() < offset:
                offset = 0
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    rows = []
    for line in data[:end].decode("utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows, offset + end


def launch_config(run_dir: Path) -> dict:
    try:
        data = read_yaml((run_dir / LAUNCH).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sample_prompts(run_dir: Path) -> list[str]:
    """The sample prompts of the run's launched config, in file order (for the samples' row labels)."""
    from ..sd.sample_prompts import read_prompt_file

    path = (launch_config(run_dir).get("sample") or {}).get("prompts")
    if not path:
        return []
    full = Path(path) if Path(path).is_absolute() else run_dir.parent.parent / path  # relative: the workspace
    try:
        return [p.prompt for p in read_prompt_file(full)]
    except (OSError, ValueError):
        return []


def samples(run_dir: Path) -> dict:
    """``{"labels": [...], "prompts": n, "cells": {label: {index: file}}}``, samplings in the order written."""
    folder = run_dir / "sample"
    found: dict[str, dict[int, str]] = {}
    times: dict[str, float] = {}
    if folder.is_dir():
        for p in folder.iterdir():
            m = SAMPLE.match(p.name)
            if m:
                found.setdefault(m["label"], {})[int(m["index"])] = p.name
                times[m["label"]] = max(times.get(m["label"], 0), p.stat().st_mtime)
    labels = sorted(found, key=lambda k: times[k])  # in the order the samplings were drawn
    n = max((max(c) + 1 for c in found.values()), default=0)
    return {"labels": labels, "prompts": n, "cells": found}


def saved_files(run_dir: Path) -> list[dict]:
    """The run's LoRA files (newest last) and checkpoints."""
    out = []
    for p in sorted(run_dir.glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns):
        out.append({"name": p.name, "kind": "lora", "bytes": p.stat().st_size, "time": p.stat().st_mtime})
    for ckpt in list_checkpoints(run_dir):
        out.append({"name": ckpt.name, "kind": "checkpoint", "bytes": None, "time": ckpt.stat().st_mtime})
    return out


def lora_files(run_dir: Path) -> list[Path]:
    """Saved epoch/step files then the final file: the comparison grid's rows."""
    files = sorted(run_dir.glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    return [p for p in files if not p.name.startswith(".")]


def progress(run_dir: Path) -> dict:
    """Step, total, steps/s of this session (``status.json``: written by the trainer's control callback)
    and the ETA at that pace (samples and saves included, as they will recur)."""
    status = read_status(run_dir) or {}
    step, total = status.get("step", 0), status.get("total_steps") or 0
    rate = None
    done, spent = step - status.get("start_step", 0), (status.get("updated") or 0) - (status.get("started") or 0)
    if done > 0 and spent > 0:
        rate = done / spent
    eta = (total - step) / rate if rate and total and status.get("state") == "running" else None
    return {"step": step, "total": total, "steps_per_s": rate, "eta_s": eta, "phase": status.get("state"),
            "updated": status.get("updated")}
