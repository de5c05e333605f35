"""The text task's config: ``model``, ``data`` and ``lora`` sections (``train`` is shared).

    model: {path: ./my-llama, task: causal_lm}
    data:  {train: data/train.jsonl, format: instruction, max_length: 512}
    lora:  {r: 16, alpha: 32, target_modules: all-linear}
    train: {output_dir: runs/x, lr: 2e-4, epochs: 3, batch_size: 8}
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from ...config import ConfigError, LoraConfig
from ...train.checks import MAX_REPEATS, adapter_not_model, device_kind, distributed_problems
from ...train.config import (
    TrainArgs,
    apply_overrides,
    parse_section,
    read_yaml,
    resolve_path,
    train_problems,
    unknown_sections,
)
from .checks import more_problems, selection_problems

__all__ = ["DataArgs", "ModelArgs", "RunConfig", "TrainArgs", "apply_overrides", "from_dict", "problems",
           "read_yaml", "resolve_path"]

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
    """Record field holding the text (``text``/``jsonl``/``classification`` formats)."""
    label_field: str = "label"
    """Record field holding the class label (``classification``)."""
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


SECTIONS = {"model": ModelArgs, "data": DataArgs, "train": TrainArgs}


@dataclass
class RunConfig:
    model: ModelArgs
    data: DataArgs
    train: TrainArgs
    lora: LoraConfig | None = None
    task = "text"

    def to_dict(self) -> dict:
        out = {name: asdict(getattr(self, name)) for name in SECTIONS}
        out["lora"] = self.lora.to_dict() if self.lora is not None else None
        return out


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
        adapter = adapter_not_model(str(resolve_path(m.path)))
        e.append(f"model.path={m.path!r} is {adapter}, not a model; set model.path to the base model's directory "
                 "(the adapter is what training writes)." if adapter else
                 f"model.path={m.path!r}: no config.json there; expected a local Hugging Face model directory "
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
    if d.repeats > MAX_REPEATS:
        e.append(f"data.repeats={d.repeats}: at most {MAX_REPEATS:,} are supported; lower it.")
    e += train_problems(t) + distributed_problems(t, m.device)
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


def from_dict(data: dict, check_paths: bool = True) -> RunConfig:
    """Build a ``RunConfig`` from a mapping, raising one ``ConfigError`` with every problem."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"expected a YAML mapping with sections {list(SECTIONS) + ['lora']}, got {data!r}"])
    unknown_sections(data, set(SECTIONS) | {"lora", "quickstart", "task"}, errors)
    parts = {name: parse_section(name, cls, data.get(name), errors) for name, cls in SECTIONS.items()}
    cfg = RunConfig(**parts, lora=_lora_section(data.get("lora"), errors))
    # an invalid lora section was reported above; do not also report it as missing
    errors += [p for p in problems(cfg, check_paths) if not (p.startswith("lora: missing") and data.get("lora"))]
    if errors:
        raise ConfigError(errors, "training config")
    return cfg
