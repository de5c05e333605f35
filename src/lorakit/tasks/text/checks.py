"""Text-task config checks beyond types: what ``lorakit train`` would reject only after loading the
model (unknown ``{placeholders}`` in the prompt template, data files that are not UTF-8, targets that
select nothing in the model)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...train.checks import device_problems, utf8_problem

if TYPE_CHECKING:
    from .config import RunConfig


def more_problems(cfg: RunConfig) -> list[str]:
    """Devices, templates, numbers and paths that ``train`` would otherwise reject only after loading the model."""
    import string

    m, d, t = cfg.model, cfg.data, cfg.train
    e = device_problems(m.device)
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
    if d.limit is not None and d.limit < 1:
        e.append(f"data.limit={d.limit}: expected a positive number of samples or null.")
    if d.max_length > 1_000_000:
        e.append(f"data.max_length={d.max_length}: expected a token count a model can take (e.g. 512).")
    for key in ("train", "eval", "test"):
        path = getattr(d, key)
        if path and Path(path).is_file():
            e += [f"data.{key}={path!r}: {p}" for p in [utf8_problem(Path(path))] if p]
    return e


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
    from ...train.config import resolve_path

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
        from ...inject import resolve_targets

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
