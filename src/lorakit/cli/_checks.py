"""Checks the commands run before any work: adapters given to predict/generate/merge, a run's output
directory, and quickstart configs (``lorakit validate`` on ``examples/quickstart.yaml``)."""

from __future__ import annotations

import math
from pathlib import Path

from ..config import ConfigError
from ..formats._io import check_output, read_json, read_safetensors, read_text
from ..formats.errors import LoraFileError
from ..formats.validate import check_peft_config

CONFIG_FILE, LABELS_FILE = "adapter_config.json", "labels.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapters(adapters: list[tuple[str, float]], task: str | None) -> list[tuple[str, float]]:
    """Each adapter is a readable PEFT directory for ``task`` (``classification`` adapters carry labels.json)."""
    for path, strength in adapters:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"adapter {p}: not found; expected a PEFT adapter directory such as "
                                    "runs/<name>/adapter (written by lorakit train).")
        if not p.is_dir():
            raise LoraFileError(p, "is a file; expected a PEFT adapter directory (adapter_config.json + "
                                "adapter_model.safetensors). For a kohya .safetensors file use lorakit.sd.load_lora.")
        if not (p / CONFIG_FILE).is_file():
            raise LoraFileError(p, f"has no {CONFIG_FILE}; expected a PEFT adapter directory (written by lorakit "
                                "train or PEFT's save_pretrained).")
        check_peft_config(read_json(p / CONFIG_FILE), p / CONFIG_FILE)
        weights = next((p / w for w in WEIGHTS if (p / w).is_file()), None)
        if weights is None:
            raise LoraFileError(p, f"has no {WEIGHTS[0]}; the adapter is incomplete (copy the whole directory).")
        read_safetensors(weights)  # refuses pickles and corrupt files, naming them
        if not math.isfinite(strength):
            raise ValueError(f"adapter {path}: strength {strength}; expected a finite number such as 0.8.")
        labels = _labels(p)
        if task == "causal_lm" and labels is not None:
            raise LoraFileError(p, f"is a classification adapter ({len(labels)} labels in {LABELS_FILE}); "
                                "expected a causal-LM adapter. Use `lorakit predict` with it instead.")
    if task == "classification" and adapters and all(_labels(Path(p)) is None for p, _ in adapters):
        raise LoraFileError(adapters[0][0], f"has no {LABELS_FILE}, so it is not a classification adapter written "
                            "by lorakit train (a causal-LM adapter? use `lorakit generate`). Expected an adapter "
                            "from a run with model.task: classification.")
    return adapters


def _labels(path: Path) -> list | None:
    f = path / LABELS_FILE
    if not f.is_file():
        return None
    labels = read_json(f)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise LoraFileError(f, f"found {str(labels)[:80]!r}; expected a JSON list of label names "
                            '(e.g. ["negative", "positive"]) in class-index order.')
    return labels


def check_run_dir(output_dir: str, resume: bool, overwrite: bool = False) -> None:
    """The run directory can be written, and does not hold a finished run (unless ``overwrite``/``resume``)."""
    out = check_output(output_dir, kind="dir", overwrite=True)
    finished = [n for n in ("summary.json", "adapter", "model", "head.safetensors") if (out / n).exists()]
    if finished and not resume and not overwrite:
        raise FileExistsError(f"train.output_dir {out} already holds a finished run ({', '.join(finished)}); "
                              "pass --overwrite to replace it, or choose another train.output_dir "
                              "(--set train.output_dir=runs/new).")


def is_quickstart(path: Path) -> bool:
    from ..train.config import read_yaml

    try:
        data = read_yaml(read_text(path))
    except Exception:  # noqa: BLE001  (load_config reports the reason with the file and line)
        return False
    return isinstance(data, dict) and "quickstart" in data


def check_quickstart(path: Path, overrides: list[str]) -> list[str]:
    """Every method's config of a quickstart file, checked as ``lorakit quickstart`` would build it, without
    writing its data; returns the method names or raises one ``ConfigError`` with every problem."""
    from ..tasks.text.config import _has_config
    from ..tasks.text.intents import IntentArgs
    from ..tasks.text.quickstart import _merge
    from ..train.config import from_dict, parse_section

    raw = _raw(path, overrides)
    errors: list[str] = []
    qs = raw.pop("quickstart", None) or {}
    methods = qs.pop("methods", None) if isinstance(qs, dict) else None
    args = parse_section("quickstart", IntentArgs, qs, errors)
    for name in ("test_fraction", "val_fraction"):
        if not 0 < getattr(args, name) < 1:
            errors.append(f"quickstart.{name}={getattr(args, name)!r}: expected a fraction in (0, 1).")
    for name in ("min_templates", "sentences_per_template", "max_train_per_intent", "max_test_per_intent"):
        if getattr(args, name) < 1:
            errors.append(f"quickstart.{name}={getattr(args, name)!r}: expected an integer >= 1.")
    if methods is None:
        methods = {"lora": {"train": {"method": "lora"}}}
    if not isinstance(methods, dict) or not all(isinstance(v, dict | None) for v in methods.values()):
        errors.append(f"quickstart.methods={methods!r}: expected a mapping of method name -> config overrides.")
        methods = {}
    for method, over in methods.items():
        merged = _merge(raw, over or {})
        if not isinstance(merged.get("data", {}), dict) or not isinstance(merged.get("train", {}), dict):
            errors.append(f"quickstart.methods.{method}: data and train must be mappings.")
            continue
        merged.setdefault("data", {})["train"] = "quickstart-data.jsonl"  # written by lorakit quickstart
        merged.setdefault("train", {}).setdefault("output_dir", "runs/quickstart")
        if merged["train"].get("method", method) != "lora":
            merged.pop("lora", None)
        try:
            cfg = from_dict(merged, check_paths=False)
            _has_config(cfg.model.path, errors) or errors.append(
                f"model.path={cfg.model.path!r}: no config.json there; expected a local Hugging Face model directory.")
        except ConfigError as exc:
            errors += [f"(method {method}) {e}" for e in exc.errors]
    if errors:
        raise ConfigError(list(dict.fromkeys(errors)), "quickstart config")
    return list(methods)


def check_quickstart_out(path: Path, overrides: list[str], out: Path | None, overwrite: bool) -> None:
    """The quickstart's output directory can be written and holds no earlier results (unless ``overwrite``)."""
    raw = _raw(path, overrides)
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    out = check_output(out or train.get("output_dir") or "runs/quickstart", kind="dir", overwrite=True)
    if (out / "results.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds quickstart results (results.json); pass --overwrite to replace "
                              "them, or choose another directory with --out.")


def _raw(path: Path, overrides: list[str]) -> dict:
    """A quickstart YAML with ``--set`` applied; parse errors name the file and line."""
    import yaml

    from ..train.config import apply_overrides, read_yaml

    try:
        raw = read_yaml(read_text(path)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path} is not valid YAML: {str(exc).replace('<unicode string>', str(path))}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping of sections (quickstart, model, data, lora, train)"])
    return apply_overrides(raw, overrides)
