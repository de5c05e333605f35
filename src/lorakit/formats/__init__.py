"""File formats: PEFT adapter directories (and, later, kohya/ComfyUI/LyCORIS safetensors)."""

from .peft import adapter_state_dict, load_adapter, save_adapter

__all__ = ["adapter_state_dict", "load_adapter", "save_adapter"]
