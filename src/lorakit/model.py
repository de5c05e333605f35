"""Adapter sets on a whole model: activate with strengths, disable, merge, unmerge, delete, unload.

With active adapters {name_i: strength_i} every wrapped layer computes
W + Σ_i strength_i · ΔW_i (as ComfyUI's stacked LoRA loaders do), merged or not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from .layer import LoraLayer, SavedModule


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """(name, layer) for every ``LoraLayer`` in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def _saved_modules(model: nn.Module) -> Iterator[tuple[str, SavedModule]]:
    for name, module in model.named_modules():
        if isinstance(module, SavedModule):
            yield name, module


def adapter_names(model: nn.Module) -> list[str]:
    """Every adapter present in ``model``, in the order they were added."""
    names: dict[str, None] = {}
    for _, layer in lora_layers(model):
        names.update(dict.fromkeys(layer.adapters))
    for _, saved in _saved_modules(model):
        names.update(dict.fromkeys(saved.modules_to_save))
    return list(names)


def active_adapters(model: nn.Module) -> dict[str, float]:
    """The active adapters and their strengths."""
    return dict(getattr(model, "lorakit_active", {}))


def _is_merged(model: nn.Module) -> bool:
    return any(layer.merged for _, layer in lora_layers(model))


def set_active_adapters(model: nn.Module, adapters: str | list[str] | dict[str, float]) -> None:
    """Activate one adapter, several (strength 1 each), or several with strengths ``{name: strength}``.

    The output becomes base + Σ strength·ΔW. Refused while adapters are merged: unmerge first,
    so that the merged weights always match what is active.
    """
    if isinstance(adapters, str):
        adapters = {adapters: 1.0}
    elif not isinstance(adapters, dict):
        adapters = dict.fromkeys(adapters, 1.0)
    known = adapter_names(model)
    unknown = [n for n in adapters if n not in known]
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; this model has {known}.")
    if _is_merged(model) and adapters != active_adapters(model):
        raise RuntimeError("adapters are merged into the weights; call lorakit.unmerge(model) before changing "
                           "the active adapters or their strengths.")
    strengths = {n: float(s) for n, s in adapters.items()}
    for _, layer in lora_layers(model):
        layer.active = {n: s for n, s in strengths.items() if n in layer.adapters}
    for _, saved in _saved_modules(model):  # a copy runs at its adapter's strength (see SavedModule)
        saved.active = next((n for n in strengths if n in saved.modules_to_save), None)
        saved.strength = strengths.get(saved.active, 1.0)
    model.lorakit_active = strengths


def wrappers(model: nn.Module) -> list[nn.Module]:
    """Every ``LoraLayer`` and ``SavedModule`` in ``model``."""
    return [m for m in model.modules() if isinstance(m, (LoraLayer, SavedModule))]


@contextlib.contextmanager
def swapped(modules: list[nn.Module], attr: str, value):
    """Set ``attr`` to ``value`` on every module inside the block; the previous values come back after."""
    previous = [getattr(m, attr) for m in modules]
    for m in modules:
        setattr(m, attr, value)
    try:
        yield
    finally:
        for m, was in zip(modules, previous, strict=True):
            setattr(m, attr, was)


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Run the base model only inside the block (merged adapters are taken out, then put back)."""
    merged = {name: dict(layer.merged) for name, layer in lora_layers(model) if layer.merged}
    for name in merged:
        model.get_submodule(name).unmerge()
    try:
        with swapped(wrappers(model), "disabled", True):
            yield model
    finally:
        for name, done in merged.items():
            model.get_submodule(name).merge(list(done))


def merge(model: nn.Module, adapter_names: list[str] | None = None, safe: bool = False) -> None:
    """Fold active adapters (or ``adapter_names``) into the base weights, with their strengths.

    Idempotent: merging again changes nothing. ``safe`` checks the result for NaN/Inf in every
    layer first and raises without touching any weight.
    """
    layers = list(lora_layers(model))
    if safe:  # check every layer before changing any
        bad = [name for name, layer in layers if not layer.merged_weight(adapter_names).isfinite().all()]
        if bad:
            raise ValueError(f"merging would put NaN/Inf into {len(bad)} layer(s) ({', '.join(bad[:5])}); "
                             "nothing was merged. Check the adapter weights before merging.")
    for _, layer in layers:
        layer.merge(adapter_names)


def unmerge(model: nn.Module) -> None:
    """Take every merged adapter out of the base weights again (no-op when nothing is merged)."""
    for _, layer in lora_layers(model):
        layer.unmerge()


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` everywhere; layers left without adapters get their plain module back."""
    if name not in adapter_names(model):
        raise ValueError(f"unknown adapter {name!r}; this model has {adapter_names(model)}.")
    for lname, layer in list(lora_layers(model)):
        if name in layer.merged:
            raise RuntimeError(f"adapter {name!r} is merged into {lname}; call lorakit.unmerge(model) first.")
    for lname, layer in list(lora_layers(model)):
        if name in layer.adapters:
            del layer.adapters[name]
            layer.active.pop(name, None)
            if not len(layer.adapters):
                _replace(model, lname, layer.base_layer)
    for sname, saved in list(_saved_modules(model)):
        if name in saved.modules_to_save:
            del saved.modules_to_save[name]
            saved.active = None if saved.active == name else saved.active
            if not len(saved.modules_to_save):
                _replace(model, sname, saved.original_module)
    model.lorakit_active = {n: s for n, s in active_adapters(model).items() if n != name}
    model.lorakit_configs = {n: c for n, c in getattr(model, "lorakit_configs", {}).items() if n != name}
    model.lorakit_trainable = set(getattr(model, "lorakit_trainable", set())) - {name}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    from .inject import _set_module

    _set_module(model, name, new)


def merge_and_unload(model: nn.Module, safe: bool = False) -> nn.Module:
    """Merge the active adapters and return ``model`` with every wrapper replaced by a plain module.

    Saved copies (``modules_to_save``) of the active adapter replace their originals, at its strength
    (:meth:`SavedModule.merged_module`). 4-bit layers
    (QLoRA) come back as dense ``nn.Linear`` holding dequant(W) + ΔW, unadapted ones as dequant(W).
    """
    from .quant import dequantize_model

    merge(model, safe=safe)
    return dequantize_model(unload(model, keep_merged=True))  # a merged QLoRA model is dense throughout


def unload(model: nn.Module, keep_merged: bool = False) -> nn.Module:
    """Remove all wrappers; unless ``keep_merged``, merged adapters are taken out first."""
    if not keep_merged:
        unmerge(model)
    for name, layer in list(lora_layers(model)):
        _replace(model, name, layer.base_layer)
    for name, saved in list(_saved_modules(model)):
        _replace(model, name, saved.merged_module() if keep_merged else saved.original_module)
    for attr in ("lorakit_configs", "lorakit_active", "lorakit_trainable"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


@dataclass(frozen=True)
class TrainableReport:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def trainable_parameters(model: nn.Module) -> TrainableReport:
    """Count trainable and all parameters (a saved copy counts once, like its original)."""
    trainable = total = 0
    for name, p in model.named_parameters():
        if ".modules_to_save." not in name:
            total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return TrainableReport(trainable, total)
