"""LoRA+ (Hayou, Ghosh, Yu 2024, arXiv 2402.12354): a larger learning rate for B than for A.

    η_B = ratio · η_A      (ratio ≈ 16 recommended; larger for harder tasks)

Parameter groups follow the paper's reference code (and PEFT's ``create_loraplus_optimizer``):

* ``A`` and every other matrix-shaped trainable parameter: ``lr``;
* adapters on embedding layers (all their parameters): ``lr_embedding`` (default 1e-6);
* ``B`` factors and every 1-D trainable parameter (biases, norms, DoRA's magnitude): ``lr · ratio``,
  with weight decay except for biases and parameters inside a LayerNorm.

Adapter parameters are found through the adapter protocol (``lora_layers`` and each adapter's
parameters), never by matching names across the model. A variant marks its "B-like" factors with a
``loraplus_b_params`` tuple of parameter names (default ``("lora_B",)``).
"""

from __future__ import annotations

from torch import nn

from .model import lora_layers

try:  # the norms transformers' Trainer exempts from weight decay
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS as _NORMS
except Exception:  # pragma: no cover - transformers is optional
    _NORMS = [nn.LayerNorm]


def _no_decay_ids(model: nn.Module) -> set[int]:
    ids = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, tuple(_NORMS)) or "bias" in pname:
                ids.add(id(p))
    return ids


def loraplus_param_groups(model: nn.Module, lr: float, ratio: float = 16.0, lr_embedding: float = 1e-6,
                          weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups for LoRA+ over the trainable parameters of ``model`` (see module doc).

    Returns a list of ``{"params", "lr", "weight_decay", "name"}`` dicts (empty groups left out),
    ready for any ``torch.optim`` optimizer.
    """
    if not lr > 0 or not ratio > 0 or not lr_embedding >= 0:
        raise ValueError(f"LoRA+ needs lr > 0, ratio > 0 and lr_embedding >= 0; got lr={lr}, ratio={ratio}, "
                         f"lr_embedding={lr_embedding}. The paper recommends ratio=16.")
    role: dict[int, str] = {}
    for _, layer in lora_layers(model):
        for adapter in layer.adapters.values():
            b_names = set(getattr(adapter, "loraplus_b_params", ("lora_B",)))
            for pname, p in adapter.named_parameters():
                if layer.spec.kind == "embedding":
                    role[id(p)] = "embedding"
                elif pname in b_names or p.ndim == 1:
                    role[id(p)] = "B"
                else:
                    role[id(p)] = "A"
    no_decay = _no_decay_ids(model)
    groups: dict[str, dict] = {
        "A": dict(lr=lr, weight_decay=weight_decay),
        "embedding": dict(lr=lr_embedding, weight_decay=weight_decay),
        "B": dict(lr=lr * ratio, weight_decay=weight_decay),
        "B_no_decay": dict(lr=lr * ratio, weight_decay=0.0),
    }
    members: dict[str, list] = {k: [] for k in groups}
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        kind = role.get(id(p)) or ("B" if p.ndim == 1 else "A")  # biases, saved copies: by shape
        if kind == "B" and id(p) in no_decay:
            kind = "B_no_decay"
        members[kind].append(p)
    return [dict(params=members[k], name=k, **groups[k]) for k in groups if members[k]]


def create_loraplus_optimizer(model: nn.Module, optimizer_cls, lr: float, ratio: float = 16.0,
                              lr_embedding: float = 1e-6, **optimizer_kwargs):
    """``optimizer_cls`` over :func:`loraplus_param_groups`; ``weight_decay`` in the kwargs goes to the groups."""
    weight_decay = optimizer_kwargs.pop("weight_decay", 0.0)
    groups = loraplus_param_groups(model, lr, ratio, lr_embedding, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters; inject an adapter (lorakit.inject) first.")
    return optimizer_cls(groups, lr=lr, **optimizer_kwargs)
