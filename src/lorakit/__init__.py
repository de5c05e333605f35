"""lorakit: LoRA fine-tuning toolkit.

    import lorakit
    model = lorakit.inject(model, lorakit.LoraConfig(r=16, alpha=32, target_modules="all-linear"))
    ...train...
    lorakit.save_adapter(model, "out/adapter")          # PEFT format
    merged = lorakit.merge_and_unload(model)             # plain model, zero inference overhead
"""

from .config import AdaLoraConfig, ConfigError, LoraConfig
from .formats import adapter_state_dict, load_adapter, save_adapter
from .inject import inject, resolve_targets
from .layer import LoraLayer, SavedModule
from .model import (
    TrainableReport,
    active_adapters,
    adapter_names,
    delete_adapter,
    disable_adapters,
    lora_layers,
    merge,
    merge_and_unload,
    set_active_adapters,
    trainable_parameters,
    unload,
    unmerge,
)
from .multi import RowMap, per_row

__version__ = "0.1.0"

__all__ = [
    "AdaLoraConfig", "ConfigError", "LoraConfig", "LoraLayer", "SavedModule", "TrainableReport", "active_adapters",
    "adapter_names", "adapter_state_dict", "delete_adapter", "disable_adapters", "inject", "load_adapter",
    "lora_layers", "merge", "merge_and_unload", "per_row", "RowMap", "resolve_targets", "save_adapter", "set_active_adapters",
    "trainable_parameters", "unload", "unmerge",
]
