"""LoRA file tools (the library behind ``lorakit inspect/merge-loras/resize/extract/convert``).

Each tool reads ``LoraFile`` objects or paths and returns new objects or writes new files; inputs
are never modified.
"""

from .extract import extract_lora
from .inspect import inspect_lora
from .merge import merge_into_base, merge_loras
from .resize import resize_lora

__all__ = ["extract_lora", "inspect_lora", "merge_into_base", "merge_loras", "resize_lora"]
