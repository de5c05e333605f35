"""Wrappers that replace modules in a model: ``LoraLayer`` (base layer + named adapters) and
``SavedModule`` (a trainable full copy of a module, PEFT's ``modules_to_save``).

A ``LoraLayer`` computes  y = base(x) + Σ_i strength_i · adapter_i(x)  over its active adapters.
Merging folds an adapter into the base weight; it is explicit, recorded in ``merged`` and
idempotent, so the output is the same merged or not.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .adapters import spec_for


class LoraLayer(nn.Module):
    """A frozen ``base_layer`` plus named adapters, of which ``active`` run with strengths."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.spec = spec_for(base_layer)
        self.adapters = nn.ModuleDict()
        self.active: dict[str, float] = {}
        self.merged: dict[str, float] = {}  # adapter -> strength it was merged with
        self.disabled = False
        self.rows = None  # a lorakit.multi.RowMap inside ``per_row``: each row its own adapter

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x, *args, **kwargs):
        if self.disabled:
            return self.base_layer(x, *args, **kwargs)
        if self.rows is not None:
            return self.rows.lora_forward(self, x, *args, **kwargs)
        live = [(n, s) for n, s in self.active.items() if n not in self.merged]
        if len(live) == 1 and not args and not kwargs:  # one live adapter: its own kernel, if it has one
            name, strength = live[0]
            out = self.adapters[name].fused_forward(x, self.base_layer, strength)
            if out is not None:
                return out
        result = self.base_layer(x, *args, **kwargs)
        for name, strength in live:
            result = self.adapters[name](x, result, self.base_layer, strength)
        return result

    # -- merging ----------------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def _pending(self, names: list[str] | None) -> list[str]:
        names = list(self.active) if names is None else names
        return [n for n in names if n in self.adapters and n not in self.merged]

    @torch.no_grad()
    def merged_weight(self, names: list[str] | None = None):
        """The base weight with the given (default: active) unmerged adapters folded in; changes nothing."""
        stored = new = self.base_layer.weight.detach()
        for name in self._pending(names):
            adapter = self.adapters[name]
            if getattr(adapter, "merge_reads_base", False):  # e.g. DoRA's norm is of the stored weight
                new = adapter.merge(new, self.active.get(name, 1.0), base_weight=stored)
            else:
                new = adapter.merge(new, self.active.get(name, 1.0))
        return new

    @torch.no_grad()
    def merge(self, names: list[str] | None = None, safe: bool = False) -> None:
        """Fold the given (default: active) adapters into the base weight; merged ones are skipped.

        ``safe`` refuses (ValueError, weight untouched) when the result holds NaN or Inf.
        """
        todo = self._pending(names)
        if not todo:
            return
        new = self.merged_weight(todo)
        if safe and not torch.isfinite(new).all():
            raise ValueError(f"merging adapters {todo} would put NaN/Inf into the weight; nothing was merged. "
                             "Check the adapter weights (lorakit inspect) before merging.")
        if getattr(self.base_layer, "is_quantized", False):
            # A 4-bit base cannot hold W + ΔW: merging swaps in a dense nn.Linear (dequantised W + ΔW)
            # and keeps the packed module, so unmerging everything restores it bit for bit.
            self.__dict__["_quantized_base"] = self.base_layer
            self.base_layer = self.base_layer.dequantized_linear()
        self.base_layer.weight.copy_(new)  # copy_, not .data.copy_: bumps the version counter caches key on
        for name in todo:
            self.merged[name] = self.active.get(name, 1.0)

    @torch.no_grad()
    def unmerge(self, names: list[str] | None = None) -> None:
        """Take merged adapters back out of the weight, in reverse merge order."""
        names = list(self.merged) if names is None else [n for n in self.merged if n in names]
        weight = self.base_layer.weight
        new = weight.data
        for name in reversed(names):
            new = self.adapters[name].unmerge(new, self.merged.pop(name))
        weight.copy_(new)
        quantized = self.__dict__.get("_quantized_base")
        if quantized is not None and not self.merged:
            self.base_layer = quantized
            del self.__dict__["_quantized_base"]

    def extra_repr(self) -> str:
        return f"adapters={list(self.adapters)}, active={self.active}, merged={list(self.merged)}"


#: modules whose output is affine in their parameters: for them the blend of outputs below equals the
#: copy with interpolated weights W + σ·(W' − W), which is what ``merge_and_unload`` writes
AFFINE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.GroupNorm)
AFFINE_NAMES = ("Conv1D", "RMSNorm")  # transformers' Conv1D and every *RMSNorm (y = w ⊙ x/rms(x))


class SavedModule(nn.Module):
    """PEFT's ``modules_to_save``: the frozen ``original_module`` and one trainable copy per adapter.

    Strength σ means for a copy what it means for every adapter, its change scaled by σ:
    y = base(x) + σ·(copy(x) − base(x)). σ = 1 is the copy (all PEFT knows: it has no strengths),
    σ = 0 the base module. ``set_active_adapters`` and ``per_row`` both follow this rule.
    """

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original_module = original
        self.modules_to_save = nn.ModuleDict()
        self.active: str | None = None
        self.strength = 1.0
        self.disabled = False
        self.rows = None  # see LoraLayer.rows

    def add(self, name: str) -> None:
        if name not in self.modules_to_save:
            clone = copy.deepcopy(self.original_module)
            for p in clone.parameters():
                p.requires_grad_(True)
            self.modules_to_save[name] = clone

    def forward(self, *args, **kwargs):
        if self.disabled:
            return self.original_module(*args, **kwargs)
        if self.rows is not None:
            return self.rows.saved_forward(self, *args, **kwargs)
        if self.active is None or self.strength == 0:
            return self.original_module(*args, **kwargs)
        out = self.modules_to_save[self.active](*args, **kwargs)
        return out if self.strength == 1 else blend(self.original_module(*args, **kwargs), out, self.strength)

    def merged_module(self) -> nn.Module:
        """One plain module computing what this wrapper computes (for ``merge_and_unload``): the base
        module, the copy, or for 0 < σ < 1 (or σ > 1) the copy with weights W + σ·(W' − W)."""
        if self.active is None or self.strength == 0:
            return self.original_module
        chosen = self.modules_to_save[self.active]
        if self.strength == 1:
            return chosen
        kind = type(self.original_module)
        if kind not in AFFINE and not kind.__name__.endswith(AFFINE_NAMES):
            raise ValueError(f"cannot fold the modules_to_save copy of a {kind.__name__} at strength {self.strength} "
                             "into one module (its output is not affine in its weights); merge at strength 0 or 1, "
                             "or keep the adapter unmerged.")
        out = copy.deepcopy(chosen)
        with torch.no_grad():
            for p, p0 in zip(out.parameters(), self.original_module.parameters(), strict=True):
                p.copy_(p0 + self.strength * (p - p0))
        return out

    def extra_repr(self) -> str:
        return f"copies={list(self.modules_to_save)}, active={self.active}, strength={self.strength}"


def blend(base, copied, strength):
    """base + σ·(copy − base) for a module's outputs (σ a number, or one per row broadcast over the rest)."""
    if not isinstance(base, torch.Tensor) or not isinstance(copied, torch.Tensor):
        raise TypeError(f"a modules_to_save copy at a strength other than 0 or 1 needs a module returning one tensor; "
                        f"it returned {type(base).__name__}.")
    if isinstance(strength, torch.Tensor):
        strength = strength.to(base.dtype).view(-1, *[1] * (base.dim() - 1))
    return base + strength * (copied.to(base.dtype) - base)
