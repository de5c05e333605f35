"""Training: one loop with callbacks (AdaLoRA, PeriodicLoRA, logging and checkpoints are callbacks).

    from lorakit.train import load_config, run
    result = run(load_config("examples/classify.yaml", ["train.lr=1e-4"]))
"""

from .callbacks import Callback, TrainState, run_callbacks
from .config import load_config
from .hooks import NonFiniteLossError
from .run import RunResult, run

__all__ = ["Callback", "NonFiniteLossError", "RunResult", "TrainState", "load_config", "run",
           "run_callbacks"]
