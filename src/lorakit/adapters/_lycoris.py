"""Shared pieces of the LyCORIS adapters (LoHa, LoKr): shape checks, Tucker rebuild, init helpers."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import BaseSpec


def check_kind(spec: BaseSpec, variant: str) -> None:
    if spec.kind == "embedding":
        raise ValueError(f"variant {variant!r} adapts Linear/Conv1D and Conv layers, not nn.Embedding; "
                         "exclude the embedding (exclude_modules) or use variant='lora' for it.")


def tucker_kernel(spec: BaseSpec, use_effective_conv2d: bool, variant: str) -> tuple[int, ...] | None:
    """Kernel shape of the Tucker core, or None when the flat (out, in·k) form is used.

    Like PEFT, 1×1 (pointwise) kernels always use the flat form; Conv1d stores its core as
    (r, r, k, 1) (PEFT's layout). Conv3d has no Tucker form here.
    """
    if not use_effective_conv2d or spec.kind != "conv" or math.prod(spec.kernel_size) == 1:
        return None
    if len(spec.kernel_size) == 2:
        return tuple(spec.kernel_size)
    if len(spec.kernel_size) == 1:
        return (spec.kernel_size[0], 1)
    raise ValueError(f"{variant}: use_effective_conv2d (Tucker form) supports Conv1d/Conv2d, got a "
                     f"{len(spec.kernel_size)}-d kernel {spec.kernel_size}; set use_effective_conv2d=False.")


def tucker_rebuild(core: torch.Tensor, w_out: torch.Tensor, w_in: torch.Tensor) -> torch.Tensor:
    """Tucker-2 product: core (r, r, kh, kw), w_out (r, out), w_in (r, in) -> (out, in, kh, kw)."""
    return torch.einsum("ijkl,ip,jq->pqkl", core, w_out, w_in)


def in_per_group(spec: BaseSpec) -> int:
    return spec.in_features // spec.groups if spec.kind == "conv" else spec.in_features


def kaiming(p: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(p, a=math.sqrt(5))


def weight_shape(spec: BaseSpec) -> tuple[int, ...]:
    """The base weight's (out, in[/groups], *k) shape, i.e. the layout ΔW is built in."""
    if spec.kind == "conv":
        return (spec.out_features, in_per_group(spec), *spec.kernel_size)
    return (spec.out_features, spec.in_features)
