"""LoHa (Hyeon-Woo et al. 2022, FedPara, arXiv 2108.06098; LyCORIS): a Hadamard product of two low-rank terms.

    ΔW = s · (W1a W1b) ⊙ (W2a W2b),   s = alpha/r  (alpha/sqrt(r) with rsLoRA)

so rank r buys an update of rank up to r². Shapes follow PEFT and LyCORIS files:

* Linear / Conv1D: ``hada_w1_a``, ``hada_w2_a`` (out, r); ``hada_w1_b``, ``hada_w2_b`` (r, in).
* ConvNd (flat form): ``hada_w*_b`` is (r, in/groups · ∏kernel) and ΔW is reshaped to the kernel.
* Conv2d with ``use_effective_conv2d`` (Tucker/CP form, kernel > 1×1): cores ``hada_t1``,
  ``hada_t2`` (r, r, kh, kw); ``hada_w*_a`` (r, out), ``hada_w*_b`` (r, in/groups);
  each term is einsum('ijkl,ip,jq->pqkl', t, w_a, w_b).

Initialisation as PEFT: W1a, W1b, W2a (and the cores) Kaiming-uniform (a=√5), W2b = 0, so a fresh
adapter is the identity. The dense ΔW is applied through the base operation (groups, stride,
dilation and padding mode included), exactly as the merged weight would be.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _lycoris as ly
from .base import Adapter, BaseSpec, scaling, to_weight_layout

INITS = ("kaiming",)


class LohaAdapter(Adapter):
    """LoHa factors for one Linear/Conv base layer (see module docstring)."""

    INITS = INITS

    def __init__(self, spec: BaseSpec, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 init: str | None = "kaiming", base: nn.Module | None = None, use_effective_conv2d: bool = False):
        super().__init__(spec, dropout)
        ly.check_kind(spec, "loha")
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scale = scaling(r, alpha, use_rslora)
        out_f, in_f = spec.out_features, ly.in_per_group(spec)
        self.core_kernel = ly.tucker_kernel(spec, use_effective_conv2d, "loha")
        if self.core_kernel is not None:
            self.hada_t1 = nn.Parameter(torch.zeros(r, r, *self.core_kernel))
            self.hada_t2 = nn.Parameter(torch.zeros(r, r, *self.core_kernel))
            a_shape, b_shape = (r, out_f), (r, in_f)
        else:
            k = 1
            for d in spec.kernel_size:
                k *= d
            a_shape, b_shape = (out_f, r), (r, in_f * k)
        self.hada_w1_a = nn.Parameter(torch.zeros(a_shape))
        self.hada_w1_b = nn.Parameter(torch.zeros(b_shape))
        self.hada_w2_a = nn.Parameter(torch.zeros(a_shape))
        self.hada_w2_b = nn.Parameter(torch.zeros(b_shape))
        if init is not None:
            self.reset(init)

    @staticmethod
    def config_options(config) -> dict:
        return {"use_effective_conv2d": config.use_effective_conv2d}

    @torch.no_grad()
    def reset(self, init: str = "kaiming") -> None:
        if init not in INITS:
            raise ValueError(f"unknown init {init!r} for loha; expected one of {INITS}.")
        for p in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a):
            ly.kaiming(p)
        nn.init.zeros_(self.hada_w2_b)
        if self.core_kernel is not None:
            ly.kaiming(self.hada_t1)
            ly.kaiming(self.hada_t2)

    def _term(self, i: int) -> torch.Tensor:
        a, b = getattr(self, f"hada_w{i}_a"), getattr(self, f"hada_w{i}_b")
        if self.core_kernel is not None:
            return ly.tucker_rebuild(getattr(self, f"hada_t{i}"), a, b)
        return a @ b

    def delta_weight(self) -> torch.Tensor:
        delta = (self._term(1) * self._term(2) * self.scale).reshape(ly.weight_shape(self.spec))
        return to_weight_layout(self.spec, delta)
