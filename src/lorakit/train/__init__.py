"""Training: one loop with callbacks (AdaLoRA, PeriodicLoRA, logging and checkpoints are callbacks)."""

from .callbacks import Callback, TrainState, run_callbacks

__all__ = ["Callback", "TrainState", "run_callbacks"]
