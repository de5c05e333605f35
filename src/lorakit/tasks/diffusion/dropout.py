"""kohya's rank and module dropout for LoRA modules (``networks/lora.py``), during training only:

* rank dropout: each rank of ``down(x)`` is zeroed per sample with probability p, and the module's
  scale is divided by 1 − p (so the expected update is unchanged);
* module dropout: the whole module is skipped (base output only) with probability p per forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...adapters.base import conv_nd
from ...adapters.lora import LoraAdapter


class KohyaDropoutLora(LoraAdapter):
    """A LoRA adapter with kohya's rank/module dropout; outside training it is a plain LoRA."""

    rank_dropout: float = 0.0
    module_dropout: float = 0.0

    def _active(self) -> bool:
        return self.training and (self.rank_dropout > 0 or self.module_dropout > 0)

    def fused_forward(self, x, base, strength):
        return None if self._active() else super().fused_forward(x, base, strength)

    def forward(self, x, result, base: nn.Module, strength: float = 1.0):
        if not self._active():
            return super().forward(x, result, base, strength)
        if self.module_dropout and float(torch.rand(())) < self.module_dropout:
            return result
        a, b, s = self.lora_A, self.lora_B, self.scale * strength
        h = self.drop(x).to(a.dtype)
        u = conv_nd(self.spec, h, a) if self.spec.kind == "conv" else F.linear(h, a)
        if self.rank_dropout:
            shape = (u.shape[0], self.r, *([1] * (u.dim() - 2))) if self.spec.kind == "conv" \
                else (u.shape[0], *([1] * (u.dim() - 2)), self.r)
            u = u * (torch.rand(shape, device=u.device) > self.rank_dropout).to(u.dtype)
            s = s / (1 - self.rank_dropout)
        up = conv_nd(self.spec, u, b, stride=1, padding=0, dilation=1) if self.spec.kind == "conv" else F.linear(u, b)
        return result + up.mul_(s).to(result.dtype)


def add_dropouts(adapters, rank_dropout: float, module_dropout: float) -> int:
    """Give plain LoRA ``adapters`` kohya's dropouts (their parameters are untouched); returns how many."""
    n = 0
    for ad in adapters:
        if type(ad) is LoraAdapter and ad.spec.kind in ("linear", "conv"):
            ad.__class__ = KohyaDropoutLora
            ad.rank_dropout, ad.module_dropout = rank_dropout, module_dropout
            n += 1
    return n
