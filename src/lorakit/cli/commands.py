"""Imports every command module so that each registers on ``lorakit.cli.app``."""
from . import train  # noqa: F401  (train, validate, predict, generate, merge, quickstart)
