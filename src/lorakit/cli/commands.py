"""Imports every command module so that each registers on ``lorakit.cli.app``."""
from . import (
    files,  # noqa: F401  (LoRA file commands: convert, inspect, merge-loras, resize, extract)
    sd,  # noqa: F401  (sd generate, sd grid)
    serve,  # noqa: F401  (serve: the OpenAI-compatible multi-adapter server)
    train,  # noqa: F401  (train, validate, predict, generate, merge, quickstart)
    ui,  # noqa: F401  (control: stop/save/sample a running training; ui: the local web UI)
)
