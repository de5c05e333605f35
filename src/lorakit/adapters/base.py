"""The adapter protocol shared by every variant, and what an adapter knows of its base layer.

An adapter sits beside one frozen base layer and describes an update ΔW in the base weight's
own layout. Every variant (LoRA, DoRA, LoHa, ...) implements the same four methods:

* ``delta_weight()``       -> ΔW, scaled, shaped like the base weight;
* ``forward(x, y, base, strength)`` -> the layer output with this adapter applied to ``y``;
* ``merge(W, strength)`` / ``unmerge(W, strength)`` -> the weight with the update folded in / out.

The wrapper in :mod:`lorakit.layer` owns several named adapters and decides which run; the
adapters never touch model structure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

try:  # transformers' GPT-2 style Conv1D stores its weight as (in, out)
    from transformers.pytorch_utils import Conv1D as _HFConv1D
except Exception:  # pragma: no cover - transformers is an optional extra
    _HFConv1D = None

SUPPORTED = "nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, transformers Conv1D"


@dataclass(frozen=True)
class BaseSpec:
    """The facts about a frozen base layer that adapter math needs.

    ``kind`` is ``"linear"``, ``"conv"`` or ``"embedding"``. ``in_features``/``out_features`` are
    channels for convolutions and (num_embeddings, embedding_dim) for embeddings.
    ``fan_in_fan_out`` marks weights stored as (in, out) (transformers ``Conv1D``).
    """

    kind: str
    in_features: int
    out_features: int
    fan_in_fan_out: bool = False
    kernel_size: tuple[int, ...] = ()
    conv_kwargs: dict = field(default_factory=dict)  # stride, padding, dilation, groups
    padding_mode: str = "zeros"
    embedding_kwargs: dict = field(default_factory=dict)

    @property
    def groups(self) -> int:
        return self.conv_kwargs.get("groups", 1)


def spec_for(module: nn.Module) -> BaseSpec:
    """Describe ``module`` for adapter math; raise ``TypeError`` for layers lorakit cannot wrap."""
    if isinstance(module, nn.Linear):
        return BaseSpec("linear", module.in_features, module.out_features)
    if _HFConv1D is not None and isinstance(module, _HFConv1D):
        in_f, out_f = module.weight.shape
        return BaseSpec("linear", in_f, out_f, fan_in_fan_out=True)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if isinstance(module.padding, str):
            raise TypeError(
                f"{type(module).__name__} uses padding={module.padding!r}; lorakit needs numeric padding. "
                "Rebuild the layer with explicit padding (e.g. padding=1 for 'same' with a 3x3 kernel)."
            )
        kwargs = dict(stride=module.stride, padding=module.padding, dilation=module.dilation,
                      groups=module.groups)
        return BaseSpec("conv", module.in_channels, module.out_channels, kernel_size=tuple(module.kernel_size),
                        conv_kwargs=kwargs, padding_mode=module.padding_mode)
    if isinstance(module, nn.Embedding):
        kwargs = dict(padding_idx=module.padding_idx, max_norm=module.max_norm, norm_type=module.norm_type,
                      scale_grad_by_freq=module.scale_grad_by_freq, sparse=module.sparse)
        return BaseSpec("embedding", module.num_embeddings, module.embedding_dim, embedding_kwargs=kwargs)
    raise TypeError(f"cannot wrap a {type(module).__name__}: lorakit adapts {SUPPORTED}.")


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv_nd(spec: BaseSpec, x: torch.Tensor, weight: torch.Tensor, **override) -> torch.Tensor:
    """Convolve ``x`` with ``weight`` using the base layer's stride/padding/dilation/groups/padding_mode."""
    kw = {**spec.conv_kwargs, **override}
    fn = _CONV[len(spec.kernel_size)]
    if spec.padding_mode != "zeros" and "padding" not in override:
        pad = [p for p in reversed(kw["padding"]) for _ in range(2)]
        x = F.pad(x, pad, mode=spec.padding_mode)
        kw["padding"] = 0
    return fn(x, weight, None, **kw)


def apply_weight(spec: BaseSpec, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Run the base layer's operation with ``weight`` (no bias): the output of a dense ΔW."""
    if spec.kind == "linear":
        return F.linear(x, weight.t() if spec.fan_in_fan_out else weight)
    if spec.kind == "conv":
        return conv_nd(spec, x, weight)
    return F.embedding(x, weight, **spec.embedding_kwargs)


def scaling(r: int, alpha: float, use_rslora: bool) -> float:
    """LoRA scale: alpha/r (Hu et al. 2021), or alpha/sqrt(r) for rsLoRA (Kalajdzievski 2023)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def to_weight_layout(spec: BaseSpec, delta_out_in: torch.Tensor) -> torch.Tensor:
    """Turn an update computed as (out, in, *k) into the base weight's storage layout."""
    if spec.kind == "embedding" or spec.fan_in_fan_out:
        return delta_out_in.t()
    return delta_out_in


class Adapter(nn.Module):
    """Base class of the adapter protocol (see module docstring).

    Subclasses set ``scale`` and implement ``delta_weight``; the default ``forward`` applies the
    dense ΔW through the base operation, which is right for any variant but not the fastest.
    """

    def __init__(self, spec: BaseSpec, dropout: float = 0.0):
        super().__init__()
        self.spec = spec
        self.dropout = float(dropout)

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        # Dropout touches only the adapter branch; p=0 returns x itself (no copy).
        if self.dropout > 0 and self.training:
            return F.dropout(x, self.dropout, True)
        return x

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x, result, base: nn.Module, strength: float = 1.0):
        delta = self.delta_weight().to(result.dtype)
        return result + strength * apply_weight(self.spec, self.drop(x).to(result.dtype), delta)

    def fused_forward(self, x: torch.Tensor, base: nn.Module, strength: float):
        """The layer's output from a single-adapter kernel, or None to take the generic path."""
        return None

    def merge(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        return weight + strength * self.delta_weight().to(weight.dtype)

    def unmerge(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        return weight - strength * self.delta_weight().to(weight.dtype)

    def adapter_params(self) -> list[str]:
        """Names of this adapter's trainable parameters (the protocol's way to find them)."""
        return [n for n, _ in self.named_parameters()]
