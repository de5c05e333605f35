"""Config checks beyond types, shared by every task: what ``lorakit train`` would reject only after
loading the model.

``lorakit validate`` runs them too, so a config it accepts does not fail ``train`` for a config reason:
devices that do not exist here, NaN/Inf numbers, an ``output_dir`` that is a file, and YAML 1.1's
``no``/``off``/``yes`` read as booleans in enum fields. Task-specific checks live with each task
(e.g. :mod:`lorakit.tasks.text.checks`).
"""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .config import TrainArgs

MAX_REPEATS = 100_000
"""Most repeats per image (kohya's folders use 1-100); more is a typo that would not fit in memory."""
MAX_EPOCH_SAMPLES = 10_000_000
"""Most samples (images x repeats) in one epoch: each is an index held for the epoch's shuffle."""

#: YAML 1.1 reads these unquoted words as booleans; in an enum field the user meant the word
_YAML_BOOLS = {False: ("no", "off", "false", "n"), True: ("yes", "on", "true", "y")}


def yaml_word(value, hint):
    """``mixed_precision: no`` arrives as False; give the enum its word back when the enum has it."""
    args = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
    if isinstance(value, bool):
        return next((w for w in _YAML_BOOLS[value] if w in args), value)
    return value



def device_kind(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec.split(":", 1)[0]


def device_problems(device: str, key: str = "model.device") -> list[str]:
    """A device that does not exist on this machine."""
    import torch

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        return [f"{key}={device!r}: unknown device; expected auto, cpu, cuda (or cuda:N) or mps."]
    if device.startswith("cuda") and not torch.cuda.is_available():
        return [f"{key}={device!r} but this machine has no CUDA device; use 'auto' or 'cpu'."]
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        return [f"{key}={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)."]
    if device == "mps" and not torch.backends.mps.is_available():
        return [f"{key}='mps' but MPS is not available here; use 'auto' or 'cpu'."]
    return []


def blocking_file(path: str) -> Path | None:
    """The file that stops ``path`` from being (or becoming) a directory: itself or a parent; else None."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def nested(a: str, b: str) -> str | None:
    """How two directories overlap: ``"equal"``, ``"inside"`` (a inside b), ``"contains"`` (b inside a), or None."""
    ra, rb = Path(a).resolve(), Path(b).resolve()
    if ra == rb:
        return "equal"
    return "inside" if rb in ra.parents else "contains" if ra in rb.parents else None


def adapter_not_model(path: str) -> str | None:
    """What ``path`` is when it is an adapter given where a model belongs: ``"a LoRA file (it holds 'k')"``,
    ``"a PEFT adapter directory (...)"``; None for anything else (other checks judge it)."""
    from ..formats._io import read_json, safetensors_keys
    from ..formats.errors import LoraFileError
    from ..formats.lorafile import adapter_key

    p = Path(path)
    if p.is_dir() and (p / "adapter_config.json").is_file() and not (p / "config.json").is_file():
        try:
            base = read_json(p / "adapter_config.json").get("base_model_name_or_path")
        except (LoraFileError, OSError, AttributeError):
            base = None
        return "a PEFT adapter directory (adapter_config.json)" + (f" for the base model {base!r}" if base else "")
    if p.is_file() and p.suffix == ".safetensors":
        try:
            key = adapter_key(safetensors_keys(p))
        except (LoraFileError, OSError):
            return None
        return f"a LoRA file (it holds {key!r})" if key else None
    return None


def train_args_problems(t: TrainArgs) -> list[str]:
    """The shared ``train`` section's paths and numbers beyond the range checks of ``train_problems``."""
    e: list[str] = []
    blocking = blocking_file(t.output_dir) if t.output_dir else None
    if not t.output_dir:
        e.append("train.output_dir: empty; set it to a directory for the run, e.g. runs/my-run.")
    elif blocking is not None:
        e.append(f"train.output_dir={t.output_dir!r}: {blocking} is a file; expected a directory path.")
    for key in ("weight_decay", "eps"):
        if getattr(t, key) < 0 or (key == "eps" and t.eps == 0):
            e.append(f"train.{key}={getattr(t, key)}: expected a {'positive' if key == 'eps' else 'non-negative'} number.")
    if t.num_cycles is not None and t.num_cycles <= 0:
        e.append(f"train.num_cycles={t.num_cycles}: expected a positive number or null.")
    for key, value in t.lr_groups.items():
        try:
            re.compile(key)
        except re.error as exc:
            e.append(f"train.lr_groups key {key!r}: not a valid regular expression ({exc}).")
        if not value > 0:
            e.append(f"train.lr_groups[{key!r}]={value}: expected a positive learning rate.")
    if not -2**63 <= t.seed < 2**63:
        e.append(f"train.seed={t.seed}: expected an integer that fits 64 bits.")
    return e


def distributed_problems(t: TrainArgs, device: str) -> list[str]:
    """``train.distributed`` and the FSDP knobs against the device (several processes are checked by
    ``lorakit validate --nproc-per-node``, see :mod:`lorakit.train.plan`)."""
    e: list[str] = []
    if t.distributed != "fsdp":
        used = [k for k in ("fsdp_wrap", "fsdp_cpu_offload") if getattr(t, k)]
        if used:
            e.append(f"train.{used[0]} is an FSDP option but train.distributed={t.distributed!r}; set "
                     "train.distributed: fsdp or drop it.")
        return e
    if t.fsdp_cpu_offload and device_kind(device) != "cuda":
        e.append("train.fsdp_cpu_offload: true keeps GPU weights in CPU memory between uses; this run is on "
                 f"model.device={device!r} (the weights are in CPU memory already); set it to false.")
    if t.mixed_precision == "fp16":
        e.append("train.mixed_precision='fp16' with train.distributed='fsdp': FSDP2 mixes precision without a loss "
                 "scaler; use 'bf16' (gradients are reduced in fp32) or 'no'.")
    if t.fsdp_wrap is not None and not all(isinstance(c, str) and c.isidentifier() for c in t.fsdp_wrap) \
            or t.fsdp_wrap == []:
        e.append(f"train.fsdp_wrap={t.fsdp_wrap!r}: expected block class names such as [LlamaDecoderLayer] "
                 "(or null for the model's own _no_split_modules).")
    return e


def non_finite(data, where: str = "") -> list[str]:
    """Every NaN/Inf number in the raw config (YAML's .nan/.inf), with its key."""
    if isinstance(data, float) and not math.isfinite(data):
        return [f"{where}={data}: expected a finite number."]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in non_finite(v, f"{where}[{i}]")]
    return []


def utf8_problem(path: Path, chunk: int = 1 << 20) -> str | None:
    """Where a data file stops being UTF-8 (line and byte), read in chunks; None when it is clean."""
    import codecs

    decoder, line, offset = codecs.getincrementaldecoder("utf-8")(), 1, 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                bad = exc.start
                line += block[:max(bad, 0)].count(b"\n")
                return (f"line {line}: byte at offset {offset + max(bad, 0)} is not UTF-8; expected a UTF-8 text file "
                        "(re-save it as UTF-8).")
            if not block:
                return None
            line += block.count(b"\n")
            offset += len(block)
