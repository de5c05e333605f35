"""The diffusion task's callbacks: kohya files beside each checkpoint, loss by timestep, samples."""

from __future__ import annotations

from pathlib import Path

import torch

from ...formats._io import write_json
from ...train.callbacks import Callback, TrainState
from .export import saved_files


class LoraSaver(Callback):
    """With every checkpoint, a kohya file ``<name>-000003.safetensors`` (at an epoch's end) or
    ``<name>-step00000120.safetensors``; keeps the last ``keep`` (the final file is the task's export)."""

    def __init__(self, run_dir: Path, name: str, keep: int | None, save):
        self.run_dir, self.name, self.keep, self.save = run_dir, name, keep, save

    def on_save(self, state: TrainState, directory) -> None:
        if not state.is_main_process or state.step >= state.total_steps:
            return
        spe = max(state.steps_per_epoch, 1)
        stem = f"{self.name}-{state.step // spe:06d}" if state.step % spe == 0 else f"{self.name}-step{state.step:08d}"
        self.save(self.run_dir / f"{stem}.safetensors", state)
        if self.keep:
            for old in saved_files(self.run_dir, self.name)[:-self.keep]:
                old.unlink(missing_ok=True)


class TimestepLoss(Callback):
    """Mean loss per tenth of the timestep range over the whole run (resumes keep the sums):
    ``loss_by_timestep.json``, and ``loss_by_timestep.png`` when ``plot`` (``train.plot``)."""

    def __init__(self, run_dir: Path, num_steps: int, plot: bool = True, buckets: int = 10):
        self.run_dir, self.num_steps, self.plot, self.buckets = run_dir, num_steps, plot, buckets
        self.sums, self.counts = torch.zeros(buckets, dtype=torch.float64), torch.zeros(buckets, dtype=torch.float64)

    def on_step_end(self, state: TrainState) -> None:
        log = getattr(state.model, "timestep_log", None)
        if not log:
            return
        t = torch.cat([x for x, _ in log])
        loss = torch.cat([y for _, y in log]).double()
        idx = (t * self.buckets // self.num_steps).clamp(0, self.buckets - 1)
        self.sums.index_add_(0, idx, loss)
        self.counts.index_add_(0, idx, torch.ones_like(loss))
        log.clear()

    def rows(self) -> list[dict]:
        width = self.num_steps // self.buckets
        return [{"timesteps": f"{i * width}-{(i + 1) * width - 1}", "samples": int(c),
                 "loss": float(s / c) if c else None}
                for i, (s, c) in enumerate(zip(self.sums.tolist(), self.counts.tolist(), strict=True))]

    def on_train_end(self, state: TrainState) -> None:
        if not state.is_main_process:
            return
        rows = self.rows()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "loss_by_timestep.json", rows)
        if not self.plot:
            return
        try:
            import matplotlib
        except ImportError:  # the JSON has the numbers
            return
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.4))
        ax.bar([r["timesteps"] for r in rows], [r["loss"] or 0.0 for r in rows])
        ax.set_xlabel("timestep")
        ax.set_ylabel("mean loss")
        ax.set_title("loss by timestep")
        ax.tick_params(axis="x", labelrotation=45)
        fig.tight_layout()
        fig.savefig(self.run_dir / "loss_by_timestep.png", dpi=110)
        plt.close(fig)

    def state_dict(self) -> dict:
        return {"sums": self.sums.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.counts = state["sums"].double(), state["counts"].double()


def sampler_callback(cfg, parts, device):
    """The sampling callback when ``sample.prompts`` is set and lorakit's generation module is available."""
    if not cfg.sample.prompts:
        return None
    try:
        from .sampling import SampleImages
    except ImportError as exc:  # pragma: no cover - the generation module ships with lorakit
        raise ImportError(f"sample.prompts is set but sampling is unavailable: {exc}") from exc
    return SampleImages(cfg, parts, device)


