"""Configuration shared by every task: YAML reading, ``--set`` overrides, typed sections, ``TrainArgs``.

A run file names its task (``task: diffusion``; absent = ``text``) and the task's sections; each
section is a dataclass with attribute docstrings. ``load_config`` applies ``--set section.key=value``
overrides, then the task's parser (``lorakit.train.task.TASKS``) collects every error in the whole
file (unknown keys with the nearest known key, wrong types, bad values, missing files) and
``ConfigError`` reports them at once.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml

from ..config import ConfigError
from .checks import non_finite, train_args_problems, yaml_word


class _Loader(yaml.SafeLoader):
    """Safe YAML that reads ``2e-4`` as the number it means (YAML 1.2); YAML 1.1 makes it a string."""


#: floats YAML 1.1 reads as strings (``2e-4``); a writer must quote strings of this shape (lorakit.ui.schema)
YAML12_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+0123456789"))


def read_yaml(text: str):
    """Parse a config (or a ``--set`` value) with the safe loader above."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds no arbitrary Python objects


@dataclass
class TrainArgs:
    output_dir: str = "runs/lorakit"
    """Run directory: config, checkpoints, final adapter, metrics.jsonl, plots, summary."""
    method: Literal["lora", "full", "head"] = "lora"
    """``lora`` (the ``lora`` section), ``full`` (every parameter), ``head`` (only ``head_modules``)."""
    head_modules: list[str] = field(default_factory=lambda: ["classifier", "score", "lm_head"])
    """Modules trained by ``method: head`` (names or dotted suffixes; missing ones are skipped)."""
    epochs: float = 1.0
    """Passes over the training data (a fraction is allowed); ``max_steps`` overrides it."""
    max_steps: int | None = None
    """Optimizer steps; overrides ``epochs`` when set."""
    batch_size: int = 8
    """Micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches whose gradients are summed into one optimizer step."""
    lr: float = 2e-4
    """Peak learning rate (after warm-up)."""
    lr_groups: dict[str, float] = field(default_factory=dict)
    """Learning rate per parameter-name regex (first match wins), e.g. ``{classifier: 1e-3}``."""
    loraplus_ratio: float | None = None
    """LoRA+ (Hayou et al. 2024): B matrices get ``lr * ratio`` (16 is the paper's choice)."""
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """``adamw`` (torch's fused AdamW) or ``adamw8bit`` (8-bit states: bitsandbytes on CUDA, lorakit's own elsewhere)."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's β1, β2."""
    eps: float = 1e-8
    """AdamW's ε."""
    scheduler: Literal["constant", "linear", "cosine", "cosine_with_restarts"] = "linear"
    """Learning-rate schedule after warm-up (transformers' schedules of the same names)."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up from 0 to ``lr``."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of the total steps (used when ``warmup_steps`` is 0)."""
    num_cycles: float | None = None
    """``cosine``: waves of the cosine (default 0.5: one decay to 0); ``cosine_with_restarts``: number of
    hard restarts (default 1). Same meaning as transformers' ``get_cosine_*schedule_with_warmup``."""
    max_grad_norm: float | None = 1.0
    """Clip the gradients' global norm to this; ``null`` turns clipping off."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward instead of keeping them (less memory, more time)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast dtype on GPU (fp16 adds a dynamic loss scaler); ``no`` keeps fp32 (the CPU default)."""
    seed: int = 42
    """Random seed (adapter init, data order, dropout): a run with the same seed repeats."""
    eval_every: int = 0
    """Evaluate every N optimizer steps (0: only at the end, when there is eval data)."""
    save_every: int = 0
    """Checkpoint every N optimizer steps (0: off)."""
    save_every_epochs: int = 0
    """Checkpoint every N epochs (0: off)."""
    keep_last: int = 2
    """Checkpoints kept (older ones are deleted after a new one is complete)."""
    log_every: int = 10
    """Write a line to metrics.jsonl every N optimizer steps."""
    progress: bool = True
    """Show the rich progress bar (rank 0 only)."""
    plot: bool = True
    """Draw loss.png (loss and learning rate by step) at the end of the run."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """How several processes (``torchrun``) share the work: ``ddp`` (each holds the whole model) or ``fsdp``
    (FSDP2: each holds 1/N of every weight, the 4-bit QLoRA base included; see docs/distributed.md).
    One process ignores it."""
    fsdp_wrap: list[str] | None = None
    """FSDP units: block class names (default: the model's own ``_no_split_modules``, e.g. LlamaDecoderLayer)."""
    fsdp_reshard_after_forward: bool = True
    """Free each block's gathered weights after its forward (all-gather them again for backward)."""
    fsdp_cpu_offload: bool = False
    """Keep parameters, gradients and optimizer state in CPU memory between uses (CUDA only)."""
    keep_heap: bool = True
    """CPU runs on glibc: keep freed memory in the heap for the whole run, so steps stop page-faulting
    their buffers back in (``train/heap.py``: a median of 12.7–17 k faults per step to none on the
    core benchmark model, steps ~3 % faster). RSS then stays at its peak. Process-wide: turn it off
    inside a process that must give memory back."""


def resolve_path(path: str) -> Path:
    """``pip:PACKAGE/sub/dir`` -> that directory inside the installed package; other paths unchanged."""
    if not path.startswith("pip:"):
        return Path(path)
    import importlib.util

    package, _, rest = path[4:].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model.path={path!r}: Python package {package!r} is not installed "
                                f"(pip install {package.replace('_', '-')}).")
    return Path(list(spec.submodule_search_locations)[0]) / rest


# -- type checking of plain YAML values against the dataclass annotations ----------------------------
def _type_ok(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin is Literal:
        return value in args
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_type_ok(k, args[0]) and _type_ok(v, args[1]) for k, v in value.items())
    return True


NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _expected(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if args and origin not in (list, dict):
        return " or ".join(_expected(a) for a in args)
    if origin is list:
        return f"a list of {_expected(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    return NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def parse_section(name: str, cls, data, errors: list[str]):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{name}: expected a mapping of keys, got {type(data).__name__} {data!r}.")
        return cls()
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    good = {}
    for key, value in data.items():
        value = yaml_word(value, hints.get(key))
        if key not in hints:
            near = difflib.get_close_matches(str(key), known, n=1)
            fix = f"did you mean {name}.{near[0]}?" if near else f"known keys: {', '.join(known)}"
            errors.append(f"{name}.{key}: unknown key; {fix}")
        elif not _type_ok(value, hints[key]):
            errors.append(f"{name}.{key}={value!r}: expected {_expected(hints[key])}.")
        else:
            if hints[key] is float and isinstance(value, int):
                value = float(value)
            good[key] = value
    return cls(**good)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``section.key=value`` or a deeper path (``quickstart.methods.lora.train.lr=3e-3``; the value is
    parsed as YAML) into the raw mapping; missing mappings along the path are created."""
    errors = []
    if overrides and not isinstance(data, dict):
        raise ConfigError([f"the config is {type(data).__name__} {str(data)[:60]}, not a mapping of sections, so "
                           "--set has nothing to override; expected a mapping of sections such as model, data, train"])
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            errors.append(f"--set {item!r}: expected section.key=value, e.g. --set train.lr=1e-4")
            continue
        node = data
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                errors.append(f"--set {item!r}: {'.'.join(parts[:depth + 1])} is {node[part]!r}, not a mapping, "
                              "so it has no keys to set; set it as a whole instead")
                break
            node = node[part]
        else:
            try:
                node[parts[-1]] = read_yaml(raw) if raw.strip() else None
            except yaml.YAMLError as exc:
                errors.append(f"--set {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]}); quote it, "
                              "e.g. --set 'data.prompt_template=\"Q: {prompt}\"'")
    if errors:
        raise ConfigError(errors, "--set overrides")
    return data


def train_problems(t: TrainArgs) -> list[str]:
    """Value problems of the shared ``train`` section (types were checked while parsing)."""
    e: list[str] = []
    for key in ("batch_size", "grad_accum", "keep_last"):
        if getattr(t, key) is not None and getattr(t, key) < 1:
            e.append(f"train.{key}={getattr(t, key)}: expected an integer >= 1.")
    for key in ("eval_every", "save_every", "save_every_epochs", "warmup_steps", "log_every"):
        if getattr(t, key) < 0:
            e.append(f"train.{key}={getattr(t, key)}: expected an integer >= 0 (0 turns it off).")
    if t.lr <= 0:
        e.append(f"train.lr={t.lr}: expected a positive learning rate such as 2e-4.")
    if t.max_steps is None and t.epochs <= 0:
        e.append(f"train.epochs={t.epochs}: expected a positive number (or set train.max_steps).")
    if t.max_steps is not None and t.max_steps < 1:
        e.append(f"train.max_steps={t.max_steps}: expected a positive integer or null.")
    if not 0 <= t.warmup_ratio < 1:
        e.append(f"train.warmup_ratio={t.warmup_ratio}: expected a fraction in [0, 1).")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        e.append(f"train.betas={t.betas}: expected two numbers in [0, 1), e.g. [0.9, 0.999].")
    if t.max_grad_norm is not None and t.max_grad_norm <= 0:
        e.append(f"train.max_grad_norm={t.max_grad_norm}: expected a positive number or null (no clipping).")
    if t.loraplus_ratio is not None and t.loraplus_ratio <= 0:
        e.append(f"train.loraplus_ratio={t.loraplus_ratio}: expected a positive ratio such as 16.")
    return e + train_args_problems(t)


def unknown_sections(data: dict, allowed: set[str], errors: list[str]) -> None:
    for key in data:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            errors.append(f"{key}: unknown section; " + (f"did you mean {near[0]}?" if near else
                                                         f"sections: {', '.join(sorted(allowed))}"))


def _task_of(data):
    """The task named by ``data["task"]`` (absent: ``text``), once the mapping has no NaN/Inf anywhere."""
    from .task import get_task

    if not isinstance(data, dict):
        raise ConfigError([f"expected a YAML mapping of config sections, got {type(data).__name__} {str(data)[:60]}"])
    nan = non_finite(data)
    if nan:  # NaN compares false with every bound checked later: report these first
        raise ConfigError(nan, "training config")
    return get_task(data.get("task"))


def from_dict(data: dict, check_paths: bool = True):
    """The config of the task named by ``data["task"]`` (absent: ``text``), raising one ``ConfigError``."""
    return _task_of(data).parse_config(data, check_paths)


def validate_data(data) -> tuple[str, list[str], str]:
    """``lorakit validate``: (task name, every problem, the task's report), without training."""
    try:
        task = _task_of(data)
    except ConfigError as exc:
        return "?", exc.errors, ""
    return (task.name, *task.validate(data))


def load_data(path: str | Path, overrides: list[str] | None = None) -> dict:
    """The raw mapping of a config file with ``--set`` overrides applied."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    from ..formats._io import read_text

    try:
        data = read_yaml(read_text(path)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path} is not valid YAML: {str(exc).replace('<unicode string>', str(path))}"]) from exc
    return apply_overrides(data, overrides or [])


def load_config(path: str | Path, overrides: list[str] | None = None, check_paths: bool = True):
    return from_dict(load_data(path, overrides), check_paths)
