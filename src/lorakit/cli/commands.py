"""Imports every command module so that each registers on ``lorakit.cli.app``."""
from . import (
    files,  # noqa: F401  (LoRA file tools: convert, inspect, merge-loras, resize, extract)
    serve,  # noqa: F401  (serve: the OpenAI-compatible multi-adapter server)
    train,  # noqa: F401  (train, validate, predict, generate, merge, quickstart)
)
