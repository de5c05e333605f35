"""What a run leaves besides weights: the loss/lr plot and the summary."""

from __future__ import annotations

import json
from pathlib import Path


def dir_size(path: str | Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_metrics(metrics_path: str | Path, out: str | Path, title: str = "") -> Path | None:
    """Loss (train and eval) and learning rate against the optimizer step, as a PNG."""
    try:
        import matplotlib
    except ImportError:  # plots are a bonus; metrics.jsonl has the numbers
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    if not train:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if evals:
        ax1.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.set_title(title or "loss")
    ax2.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("learning rate")
    ax2.set_title("learning rate")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def format_summary(summary: dict) -> str:
    lines = [f"trainable params: {summary['trainable_params']:,} of {summary['total_params']:,} "
             f"({summary['trainable_percent']:.3f}%)",
             f"saved weights: {summary['saved_bytes'] / 1e6:.2f} MB at {summary['saved_path']}",
             f"wall time: {summary['train_seconds']:.1f} s, {summary['samples_per_s']:.1f} samples/s"
             + (f", {summary['tokens_per_s']:.0f} tokens/s" if summary.get("tokens_per_s") else "")
             + (f" over the whole run (this session: steps {session['from_step']}-{summary['steps']}, "
                f"{session['seconds']:.1f} s, {session['samples_per_s']:.1f} samples/s)"
                if (session := summary.get("session")) and session.get("from_step") else "")]
    if summary.get("best_eval"):
        best = ", ".join(f"{k}={v:.4g}" for k, v in summary["best_eval"].items() if isinstance(v, (int, float)))
        lines.append(f"best eval: {best}")
    if summary.get("test"):
        lines.append("held-out test: " + ", ".join(f"{k}={v:.4g}" for k, v in summary["test"].items()))
    return "\n".join(lines)
