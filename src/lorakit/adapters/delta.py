"""A fixed dense update ΔW as an adapter: how LoHa, LoKr, DoRA and full-weight file modules run live.

The update is computed once from the file (:mod:`lorakit.formats.lycoris`) and kept frozen; the
layer output is base(x) + strength·op(x, ΔW), and merging adds strength·ΔW to the weight.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, BaseSpec


class DeltaAdapter(Adapter):
    """ΔW stored densely in the base weight's layout (no rank structure, not trainable)."""

    def __init__(self, spec: BaseSpec, delta: torch.Tensor):
        super().__init__(spec, 0.0)
        self.delta = nn.Parameter(delta, requires_grad=False)
        self.scale = 1.0

    def delta_weight(self) -> torch.Tensor:
        return self.delta
