"""Synthetic LoRA files for tool tests (no model needed): Linear and 3x3-conv modules."""

import torch

from lorakit.formats.lorafile import LoraFile

SHAPES = {"unet.mid_block.attentions.0.proj_in": (12, 10), "unet.conv_in": (6, 4, 3, 3), "text_encoder.text_model.encoder.layers.0.mlp.fc1": (8, 8)}


def lora_file(seed: int, rank: int = 3, alpha: float = 2.0, shapes=SHAPES) -> LoraFile:
    g = torch.Generator().manual_seed(seed)
    mods = {}
    for key, shape in shapes.items():
        up = torch.randn(shape[0], rank, *([1, 1] if len(shape) == 4 else []), generator=g)
        down = torch.randn(rank, *shape[1:], generator=g)
        mods[key] = {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(alpha)}
    return LoraFile(mods, {"ss_base_model_version": "sd_v1"})


def delta(m) -> torch.Tensor:
    """Independent ΔW: (alpha/r)·up·down in the weight's shape."""
    up, down = m["lora_up.weight"], m["lora_down.weight"]
    scale = float(m["alpha"]) / down.shape[0]
    return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]) * scale


def tail(s: torch.Tensor, k: int) -> float:
    """Eckart–Young: the Frobenius error of the best rank-k approximation."""
    return float((s[k:] ** 2).sum().sqrt())
