"""Imports every command module so that each registers on ``lorakit.cli.app``."""
