"""Activation (gradient) checkpointing for Hugging Face models, shared by the tasks."""

from __future__ import annotations

from torch import nn


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute activations in backward instead of storing them (non-reentrant: works when the inputs
    need no grad, as with a frozen base)."""
    if getattr(model, "config", None) is not None and hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
