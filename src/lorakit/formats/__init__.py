"""File formats: PEFT adapter directories, and image-model LoRA files (Stable Diffusion kohya/LyCORIS/diffusers,
FLUX.1/SD3 kohya/diffusers/ComfyUI) through ``read_lora``/``write_lora``."""

from .peft import adapter_state_dict, load_adapter, save_adapter
from .sd_io import read_lora, write_lora

__all__ = ["adapter_state_dict", "load_adapter", "read_lora", "save_adapter", "write_lora"]
