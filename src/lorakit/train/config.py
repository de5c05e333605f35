"""The training run's configuration: typed dataclasses with attribute docstrings, read from YAML.

A run file has four sections, each a dataclass below (``lora`` maps straight to ``lorakit.LoraConfig``)::

    model: {path: ./my-llama, task: causal_lm}
    data:  {train: data/train.jsonl, format: instruction, max_length: 512}
    lora:  {r: 16, alpha: 32, target_modules: all-linear}
    train: {output_dir: runs/x, lr: 2e-4, epochs: 3, batch_size: 8}

``load_config`` applies ``--set section.key=value`` overrides, then ``problems`` collects every error
in the whole file (unknown keys with the nearest known key, wrong types, bad values, missing files)
and ``ConfigError`` reports them at once.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml

from ..config import ConfigError, LoraConfig
from .checks import device_kind, more_problems, non_finite, selection_problems, yaml_word


class _Loader(yaml.SafeLoader):
    """Safe YAML that reads ``2e-4`` as the number it means (YAML 1.2); YAML 1.1 makes it a string."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def read_yaml(text: str):
    """Parse a config (or a ``--set`` value) with the safe loader above."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds no arbitrary Python objects


TASKS = ("causal_lm", "classification")
FORMATS = ("auto", "text", "jsonl", "instruction", "classification")


@dataclass
class ModelArgs:
    path: str = ""
    """Local Hugging Face model directory (config.json + weights + tokenizer). Never downloaded.
    ``pip:PACKAGE/sub/dir`` names a directory inside an installed Python package."""
    task: Literal["causal_lm", "classification"] = "causal_lm"
    """``causal_lm`` (AutoModelForCausalLM) or ``classification`` (AutoModelForSequenceClassification)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the base weights are loaded in; trainable parameters are kept in float32."""
    device: str = "auto"
    """``auto`` (cuda when available, else cpu), ``cpu`` or ``cuda``."""


@dataclass
class DataArgs:
    train: str = ""
    """Training file: .txt (one document per blank-line-separated block), .jsonl or .csv."""
    eval: str | None = None
    """Optional validation file in the same format: evaluated during training (``eval_every``) and
    at the end; use it, never ``test``, to choose hyperparameters."""
    test: str | None = None
    """Optional held-out test file, evaluated once after training (``test_*`` in summary.json)."""
    format: Literal["auto", "text", "jsonl", "instruction", "classification"] = "auto"
    """``text``/``jsonl`` (plain text, ``text_field``), ``instruction`` (prompt/response or chat
    ``messages``; loss on the response only), ``classification`` (text + label). ``auto`` guesses
    from the task and the first record."""
    text_field: str = "text"
    label_field: str = "label"
    prompt_template: str | None = None
    """Instruction template with ``{prompt}`` (and optional ``{input}``); ``None`` uses the tokenizer's chat
    template, or ``"### Instruction:\\n{prompt}\\n\\n### Response:\\n"`` when it has none."""
    max_length: int = 512
    """Tokens per sample (longer samples are truncated; packed blocks have exactly this length)."""
    packing: bool = False
    """Causal LM only: concatenate samples and cut blocks of ``max_length`` (no padding)."""
    repeats: int = 1
    """Each sample appears this many times per epoch (kohya-style repeats)."""
    limit: int | None = None
    """Use only the first N training samples (for quick runs)."""


@dataclass
class TrainArgs:
    output_dir: str = "runs/lorakit"
    """Run directory: config, checkpoints, final adapter, metrics.jsonl, plots, summary."""
    method: Literal["lora", "full", "head"] = "lora"
    """``lora`` (the ``lora`` section), ``full`` (every parameter), ``head`` (only ``head_modules``)."""
    head_modules: list[str] = field(default_factory=lambda: ["classifier", "score", "lm_head"])
    """Modules trained by ``method: head`` (names or dotted suffixes; missing ones are skipped)."""
    epochs: float = 1.0
    max_steps: int | None = None
    """Optimizer steps; overrides ``epochs`` when set."""
    batch_size: int = 8
    """Micro-batch per process."""
    grad_accum: int = 1
    lr: float = 2e-4
    lr_groups: dict[str, float] = field(default_factory=dict)
    """Learning rate per parameter-name regex (first match wins), e.g. ``{classifier: 1e-3}``."""
    loraplus_ratio: float | None = None
    """LoRA+ (Hayou et al. 2024): B matrices get ``lr * ratio`` (16 is the paper's choice)."""
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: Literal["constant", "linear", "cosine", "cosine_with_restarts"] = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    """Warmup as a fraction of the total steps (used when ``warmup_steps`` is 0)."""
    num_cycles: float | None = None
    """``cosine``: waves of the cosine (default 0.5: one decay to 0); ``cosine_with_restarts``: number of
    hard restarts (default 1). Same meaning as transformers' ``get_cosine_*schedule_with_warmup``."""
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast dtype on GPU (fp16 adds a dynamic loss scaler); ``no`` keeps fp32 (the CPU default)."""
    seed: int = 42
    eval_every: int = 0
    """Evaluate every N optimizer steps (0: only at the end, when there is eval data)."""
    save_every: int = 0
    """Checkpoint every N optimizer steps (0: off)."""
    save_every_epochs: int = 0
    """Checkpoint every N epochs (0: off)."""
    keep_last: int = 2
    """Checkpoints kept (older ones are deleted after a new one is complete)."""
    log_every: int = 10
    progress: bool = True
    """Show the rich progress bar (rank 0 only)."""
    plot: bool = True
    keep_heap: bool = True
    """CPU runs on glibc: keep freed memory in the heap for the whole run, so steps stop page-faulting
    their buffers back in (``train/heap.py``: a median of 12.7–17 k faults per step to none on the
    core benchmark model, steps ~3 % faster). RSS then stays at its peak. Process-wide: turn it off
    inside a process that must give memory back."""


SECTIONS = {"model": ModelArgs, "data": DataArgs, "train": TrainArgs}


@dataclass
class RunConfig:
    model: ModelArgs
    data: DataArgs
    train: TrainArgs
    lora: LoraConfig | None = None

    def to_dict(self) -> dict:
        out = {name: asdict(getattr(self, name)) for name in SECTIONS}
        out["lora"] = self.lora.to_dict() if self.lora is not None else None
        return out


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


def _section(name: str, cls, data, errors: list[str]):
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


def _lora_section(data, errors: list[str]) -> LoraConfig | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        errors.append(f"lora: expected a mapping of LoraConfig fields, got {data!r}.")
        return None
    known = [f.name for f in fields(LoraConfig)]
    unknown = [k for k in data if k not in known]
    for key in unknown:
        near = difflib.get_close_matches(str(key), known, n=1)
        errors.append(f"lora.{key}: unknown key; " + (f"did you mean lora.{near[0]}?" if near else
                                                      f"known keys: {', '.join(known)}"))
    try:
        return LoraConfig(**{k: v for k, v in data.items() if k not in unknown})
    except ConfigError as exc:
        errors += [f"lora.{e}" for e in exc.errors]
    except TypeError as exc:
        errors.append(f"lora: {exc}")
    return None


def _has_config(path: str, errors: list[str]) -> bool:
    try:
        return (resolve_path(path) / "config.json").is_file()
    except FileNotFoundError as exc:
        errors.append(str(exc))
        return True


def problems(cfg: RunConfig, check_paths: bool = True) -> list[str]:
    """Value and consistency problems (types were checked while parsing)."""
    m, d, t = cfg.model, cfg.data, cfg.train
    e: list[str] = []
    if not m.path:
        e.append("model.path: missing; set it to a local Hugging Face model directory (with config.json).")
    elif check_paths and not _has_config(m.path, e):
        e.append(f"model.path={m.path!r}: no config.json there; expected a local Hugging Face model directory "
                 "(save one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir)).")
    if not d.train:
        e.append("data.train: missing; set it to a .txt, .jsonl or .csv file.")
    for key in ("train", "eval", "test"):
        path = getattr(d, key)
        if check_paths and path and not Path(path).is_file():
            e.append(f"data.{key}={path!r}: file not found (paths are relative to the working directory).")
    if m.task == "classification" and d.format in ("text", "jsonl", "instruction"):
        e.append(f"data.format={d.format!r} does not fit model.task='classification'; use 'classification' or 'auto'.")
    if m.task == "causal_lm" and d.format == "classification":
        e.append("data.format='classification' needs model.task='classification'.")
    if d.packing and m.task != "causal_lm":
        e.append("data.packing: only for model.task='causal_lm'; set it to false.")
    for key, lo in (("max_length", 2), ("repeats", 1)):
        if getattr(d, key) < lo:
            e.append(f"data.{key}={getattr(d, key)}: expected an integer >= {lo}.")
    for key in ("batch_size", "grad_accum", "keep_last"):
        if getattr(t, key) < 1:
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
    if t.loraplus_ratio is not None and t.lr_groups:
        e.append("train.loraplus_ratio and train.lr_groups both set the learning rates; use one of them.")
    if t.method == "lora" and cfg.lora is None:
        e.append("lora: missing; train.method='lora' needs a lora section (e.g. {r: 8, target_modules: all-linear}), "
                 "or set train.method to 'full' or 'head'.")
    if t.method != "lora" and t.loraplus_ratio is not None:
        e.append(f"train.loraplus_ratio needs train.method='lora' (got {t.method!r}).")
    if t.mixed_precision == "fp16" and device_kind(m.device) == "cpu":
        e.append("train.mixed_precision='fp16' is not supported on CPU; use 'no' (fp32) or 'bf16'.")
    e += more_problems(cfg)
    return e + selection_problems(cfg) if check_paths and not e else e


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``section.key=value`` or a deeper path (``quickstart.methods.lora.train.lr=3e-3``; the value is
    parsed as YAML) into the raw mapping; missing mappings along the path are created."""
    errors = []
    if overrides and not isinstance(data, dict):
        raise ConfigError([f"the config is {type(data).__name__} {str(data)[:60]}, not a mapping of sections, so "
                           f"--set has nothing to override; expected sections {list(SECTIONS) + ['lora']}"])
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


def from_dict(data: dict, check_paths: bool = True) -> RunConfig:
    """Build a ``RunConfig`` from a mapping, raising one ``ConfigError`` with every problem."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"expected a YAML mapping with sections {list(SECTIONS) + ['lora']}, got {data!r}"])
    allowed = set(SECTIONS) | {"lora", "quickstart"}
    for key in data:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            errors.append(f"{key}: unknown section; " + (f"did you mean {near[0]}?" if near else
                                                         f"sections: {', '.join(sorted(allowed))}"))
    nan = non_finite(data)
    if nan:  # NaN compares false with every bound checked below: report these first, with the key errors
        raise ConfigError(errors + nan, "training config")
    parts = {name: _section(name, cls, data.get(name), errors) for name, cls in SECTIONS.items()}
    cfg = RunConfig(**parts, lora=_lora_section(data.get("lora"), errors))
    # an invalid lora section was reported above; do not also report it as missing
    errors += [p for p in problems(cfg, check_paths) if not (p.startswith("lora: missing") and data.get("lora"))]
    if errors:
        raise ConfigError(errors, "training config")
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, check_paths: bool = True) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    from ..formats._io import read_text

    try:
        data = read_yaml(read_text(path)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path} is not valid YAML: {str(exc).replace('<unicode string>', str(path))}"]) from exc
    return from_dict(apply_overrides(data, overrides or []), check_paths)
