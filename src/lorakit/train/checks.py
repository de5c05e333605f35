"""Config checks beyond types: what ``lorakit train`` would reject only after loading the model.

``lorakit validate`` runs them too, so a config it accepts does not fail ``train`` for a config reason:
devices that do not exist here, unknown ``{placeholders}`` in the prompt template, NaN/Inf numbers,
an ``output_dir`` that is a file, and YAML 1.1's ``no``/``off``/``yes`` read as booleans in enum fields.
"""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .config import RunConfig

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


def more_problems(cfg: RunConfig) -> list[str]:
    """Devices, templates, numbers and paths that ``train`` would otherwise reject only after loading the model."""
    import string

    import torch

    m, d, t = cfg.model, cfg.data, cfg.train
    e: list[str] = []
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", m.device):
        e.append(f"model.device={m.device!r}: unknown device; expected auto, cpu, cuda (or cuda:N) or mps.")
    elif m.device.startswith("cuda") and not torch.cuda.is_available():
        e.append(f"model.device={m.device!r} but this machine has no CUDA device; use 'auto' or 'cpu'.")
    elif m.device.startswith("cuda:") and int(m.device[5:]) >= torch.cuda.device_count():
        e.append(f"model.device={m.device!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif m.device == "mps" and not torch.backends.mps.is_available():
        e.append("model.device='mps' but MPS is not available here; use 'auto' or 'cpu'.")
    if t.mixed_precision == "bf16" and m.dtype == "float16":
        e.append("train.mixed_precision='bf16' with model.dtype='float16': use one half-precision type.")
    if d.prompt_template is not None:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(d.prompt_template) if f is not None}
        except ValueError as exc:
            e.append(f"data.prompt_template: {exc}; write a literal brace as {{{{ or }}}}.")
        else:
            bad = sorted(names - {"prompt", "input"})
            if bad:
                e.append(f"data.prompt_template: unknown placeholder(s) {', '.join('{' + b + '}' for b in bad)}; "
                         "expected {prompt} and optionally {input} (write a literal brace as {{ or }}).")
            elif "prompt" not in names:
                e.append("data.prompt_template: no {prompt} placeholder; the instruction would be dropped.")
    out = Path(t.output_dir)
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None) if t.output_dir else None
    if not t.output_dir:
        e.append("train.output_dir: empty; set it to a directory for the run, e.g. runs/my-run.")
    elif blocking is not None:
        e.append(f"train.output_dir={t.output_dir!r}: {blocking} is a file; expected a directory path.")
    for key in ("weight_decay", "eps"):
        if getattr(t, key) < 0 or (key == "eps" and t.eps == 0):
            e.append(f"train.{key}={getattr(t, key)}: expected a {'positive' if key == 'eps' else 'non-negative'} number.")
    if t.num_cycles is not None and t.num_cycles <= 0:
        e.append(f"train.num_cycles={t.num_cycles}: expected a positive number or null.")
    if d.limit is not None and d.limit < 1:
        e.append(f"data.limit={d.limit}: expected a positive number of samples or null.")
    if d.max_length > 1_000_000:
        e.append(f"data.max_length={d.max_length}: expected a token count a model can take (e.g. 512).")
    for key, value in t.lr_groups.items():
        try:
            re.compile(key)
        except re.error as exc:
            e.append(f"train.lr_groups key {key!r}: not a valid regular expression ({exc}).")
        if not value > 0:
            e.append(f"train.lr_groups[{key!r}]={value}: expected a positive learning rate.")
    for key in ("train", "eval", "test"):
        path = getattr(d, key)
        if path and Path(path).is_file():
            e += [f"data.{key}={path!r}: {p}" for p in [utf8_problem(Path(path))] if p]
    if not -2**63 <= t.seed < 2**63:
        e.append(f"train.seed={t.seed}: expected an integer that fits 64 bits.")
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


def _skeleton(path: str, task: str):
    """The model's module tree on the ``meta`` device (no weights read, no memory): what ``train`` will adapt."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    cls = transformers.AutoModelForSequenceClassification if task == "classification" else \
        transformers.AutoModelForCausalLM
    with torch.device("meta"):
        return cls.from_config(config)


_SKELETONS: dict = {}


def selection_problems(cfg: RunConfig) -> list[str]:
    """``lora.target_modules``/``exclude_modules``/``layers_to_transform`` or ``train.head_modules`` that select
    nothing in this model: checked against its module tree, as ``train`` would after loading it."""
    from .config import resolve_path

    m, t = cfg.model, cfg.train
    try:
        path = resolve_path(m.path)
        key = (str(path), m.task, (path / "config.json").stat().st_mtime)
        if key not in _SKELETONS:
            _SKELETONS.clear()
            _SKELETONS[key] = _skeleton(str(path), m.task)
    except Exception:  # noqa: BLE001  (an unreadable model is reported by the path check or by train)
        return []
    model = _SKELETONS[key]
    if t.method == "lora" and cfg.lora is not None:
        from ..inject import resolve_targets

        try:
            resolve_targets(model, cfg.lora)
        except ValueError as exc:
            first = str(exc).split(" Modules in this model:")[0]
            leaves = sorted({n.rsplit(".", 1)[-1] for n, x in model.named_modules() if n and not list(x.children())})
            return [f"lora: {first} Leaf module names in {m.path}: {', '.join(leaves[:30])}."]
    if t.method == "head" and not any(n == h or n.endswith("." + h) for n, _ in model.named_modules()
                                      for h in t.head_modules):
        return [f"train.head_modules={t.head_modules}: none is a module of {m.path}; top-level modules: "
                f"{[n for n, _ in model.named_children()]}."]
    return []
