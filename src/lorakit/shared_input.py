"""Layers that read the same input tensor (q, k and v; a DiT single block's q/k/v and MLP input) sharing one
LoRA down-projection GEMM per forward (the math: ``adapters._shared_down``).

``share_input(model, groups)`` links the named ``LoraLayer``s of each group. The first member called
with an input computes every eligible member's u = x Aᵢᵀ in one GEMM and keeps them for the others,
which must be called with that same tensor (identity and version), unchanged, in the same grad mode.
A member called with another tensor, or not eligible (several live adapters, dropout, a dense-form
shape, a variant other than LoRA), takes its own path, so the outputs never depend on the grouping.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapters._shared_down import lora_up, shared_down
from .layer import LoraLayer


class SharedInput:
    """One group of ``LoraLayer``s reading the same tensor (see module docstring)."""

    def __init__(self, layers: list[LoraLayer]):
        self.layers = list(layers)
        for layer in self.layers:
            layer.shared = self
        self._clear()

    def _clear(self) -> None:
        self._key, self._x, self._u = None, None, {}

    def _eligible(self, layer: LoraLayer, x: torch.Tensor):
        live = [(n, s) for n, s in layer.active.items() if n not in layer.merged]
        if layer.disabled or layer.rows is not None or len(live) != 1:
            return None
        name, strength = live[0]
        adapter = layer.adapters[name]
        return (adapter, strength) if adapter.shares_down(x, layer.base_layer) else None

    def _compute(self, x: torch.Tensor) -> None:
        chosen = [(layer, e) for layer in self.layers if (e := self._eligible(layer, x)) is not None]
        self._clear()
        if len(chosen) < 2:
            return
        factors = list({id(ad.lora_A): ad.lora_A for _, (ad, _) in chosen}.values())
        us = dict(zip([id(f) for f in factors], shared_down(x.reshape(-1, x.shape[-1]), factors), strict=True))
        self._key, self._x = (x._version, torch.is_grad_enabled()), x
        self._u = {id(layer): (us[id(ad.lora_A)], ad, strength) for layer, (ad, strength) in chosen}

    def forward(self, layer: LoraLayer, x: torch.Tensor):
        """``layer``'s output with its u from the group's GEMM, or None (the layer takes its own path)."""
        if id(layer) not in self._u:  # this member opens a new round (if it can be served at all)
            if self._eligible(layer, x) is None:
                return None
            self._compute(x)
        entry = self._u.pop(id(layer), None)
        stale = self._x is not x or self._key != (x._version, torch.is_grad_enabled())
        if not self._u:
            self._clear()  # every member served: drop the references to x and the u's
        if entry is None or stale:  # called with another tensor than the round's: its own path
            return None
        u, adapter, strength = entry
        base = layer.base_layer
        return lora_up(x, base.weight, base.bias, u, adapter.lora_B, adapter.scale * strength)


def share_input(model: nn.Module, groups: list[list[str]]) -> int:
    """Link each group of adapted module names (each group reads one input tensor); returns how many groups."""
    n = 0
    for names in groups:
        layers = [model.get_submodule(name) for name in names]
        bad = [name for name, layer in zip(names, layers, strict=True) if not isinstance(layer, LoraLayer)]
        if bad:
            raise ValueError(f"share_input: {bad} are not adapted layers (got {[type(m).__name__ for m in layers]}); "
                             "pass names of modules that inject() wrapped.")
        if len(layers) > 1:
            SharedInput(layers)
            n += 1
    return n
