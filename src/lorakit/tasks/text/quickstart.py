"""``lorakit quickstart``: all-MiniLM-L6-v2 as a Home Assistant intent classifier, trained as head
only, LoRA and full fine-tuning with the same budget, compared in one table.

Everything comes from ``examples/quickstart.yaml`` (a copy, ``quickstart.yaml``, ships next to this
module): the ``quickstart`` section shapes the data and names the per-method overrides; the other
sections are an ordinary ``lorakit train`` config applied to each method.
"""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from pathlib import Path

from ...config import ConfigError
from ...formats._io import write_json
from ...train.report import read_metrics
from .config import apply_overrides, from_dict, read_yaml
from .intents import IntentArgs, intent_splits

DEFAULT_CONFIG = Path(__file__).with_name("quickstart.yaml")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _intent_args(section: dict) -> IntentArgs:
    known = {f.name for f in fields(IntentArgs)} - {"extra"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError([f"quickstart.{k}: unknown key; known keys: {sorted(known)}" for k in unknown],
                          "quickstart config")
    return IntentArgs(**section)


def prepare(config: str | Path | None = None, overrides: list[str] | None = None,
            output_dir: str | Path | None = None) -> tuple[dict, dict, Path]:
    """(per-method raw configs, data info, output dir): writes the intent data as JSONL."""
    path = Path(config) if config else DEFAULT_CONFIG
    raw = apply_overrides(read_yaml(path.read_text()) or {}, overrides or [])
    qs = dict(raw.pop("quickstart", None) or {})
    methods = qs.pop("methods", None) or {"lora": {"train": {"method": "lora"}}}
    out = Path(output_dir or raw.get("train", {}).get("output_dir") or "runs/quickstart")
    splits, info = intent_splits(_intent_args(qs))
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (data_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    configs = {}
    for method, over in methods.items():
        merged = _merge(raw, over or {})
        merged.setdefault("data", {}).update(train=str(data_dir / "train.jsonl"), eval=str(data_dir / "val.jsonl"),
                                             test=str(data_dir / "test.jsonl"))
        merged.setdefault("train", {})["output_dir"] = str(out / method)
        if merged["train"].get("method", method) != "lora":
            merged.pop("lora", None)
        configs[method] = merged
    return configs, info, out


def quickstart(config: str | Path | None = None, overrides: list[str] | None = None,
               output_dir: str | Path | None = None, console=None) -> list[dict]:
    """Train every method of the quickstart config; returns one row per method (and prints the table)."""
    from rich.console import Console

    from ...train.run import run

    console = console or Console(highlight=False)
    configs, info, out = prepare(config, overrides, output_dir)
    parsed = {m: from_dict(c) for m, c in configs.items()}  # every method's errors before any training
    console.print(f"[bold]Home Assistant intents[/]: {len(info['intents'])} intents, {info['train']} train sentences "
                  f"from {info['train_templates']} templates; held-out templates: {info['val']} validation sentences "
                  f"from {info['val_templates']}, {info['test']} test sentences from {info['test_templates']}")
    rows = []
    for method, cfg in parsed.items():
        console.rule(f"[bold]{method}")
        result = run(cfg)
        s = result.summary
        final, test = s["final_eval"] or {}, s["test"] or {}
        rows.append({"method": method, "val_accuracy": final.get("eval_accuracy"),
                     "test_accuracy": test.get("test_accuracy"), "test_loss": test.get("test_loss"),
                     "trainable_params": s["trainable_params"], "trainable_percent": s["trainable_percent"],
                     "saved_bytes": s["saved_bytes"], "saved_path": s["saved_path"],
                     "train_seconds": s["train_seconds"], "samples_per_s": s["samples_per_s"], "steps": s["steps"]})
    write_json(out / "results.json", {"data": info, "results": rows})
    console.print(results_table(rows))
    plot_comparison(rows, out)
    lora = next((r for r in rows if r["method"] == "lora"), None)
    if lora:
        console.print(f"LoRA adapter (PEFT format): {lora['saved_path']}\nplots: {out / 'quickstart.png'} and "
                      f"{out}/<method>/loss.png\ntry it: lorakit predict {configs['lora']['model']['path']} "
                      f"--adapter {lora['saved_path']} \"turn off the kitchen light\"")
    return rows


def results_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="all-MiniLM-L6-v2 on Home Assistant intents: accuracy on unseen templates")
    for col in ("method", "val acc", "test acc", "trainable", "saved", "time", "samples/s"):
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for r in rows:
        val, acc = ("-" if v is None else f"{100 * v:.2f}%" for v in (r["val_accuracy"], r["test_accuracy"]))
        table.add_row(r["method"], val, acc, f"{_count(r['trainable_params'])} ({r['trainable_percent']:.3g}%)",
                      _size(r["saved_bytes"]), f"{r['train_seconds']:.1f} s", f"{r['samples_per_s']:.1f}")
    return table


def _count(n: int) -> str:
    """8,855 -> 8.9k, 22,722,071 -> 22.7M: the table fits 80 columns (exact counts are in results.json)."""
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def plot_comparison(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in rows:
        train = [m for m in read_metrics(out / r["method"] / "metrics.jsonl") if "loss" in m]
        ax1.plot([m["step"] for m in train], [m["loss"] for m in train], label=r["method"])
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("train loss")
    ax1.legend()
    ax1.set_title("training loss")
    at = range(len(rows))
    for shift, key, color in ((-0.2, "val_accuracy", "#9bc"), (0.2, "test_accuracy", "#36c")):
        ax2.bar([i + shift for i in at], [100 * (r[key] or 0) for r in rows], width=0.4, color=color,
                label=key.split("_")[0])
    ax2.set_xticks(list(at), [r["method"] for r in rows])
    ax2.set_ylabel("accuracy (%)")
    ax2.legend(loc="lower right")
    ax2.set_title("unseen templates")
    fig.tight_layout()
    fig.savefig(out / "quickstart.png", dpi=110)
    plt.close(fig)
    return out / "quickstart.png"
