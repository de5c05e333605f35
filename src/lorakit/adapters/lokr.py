"""LoKr (Yeh et al. 2024, LyCORIS, arXiv 2309.14859): a Kronecker product of a small and a (low-rank) factor.

    ΔW = s · W1 ⊗ W2,   s = alpha/r  (alpha/sqrt(r) with rsLoRA; PEFT's rule, kept even when both
                                       factors are full, where LyCORIS itself would use s = 1)

``factorization(dim, decompose_factor)`` splits out = a·b and in = c·d with a ≤ b, c ≤ d
(the split closest to √dim, or one factor equal to ``decompose_factor``). Then:

* W1 (a, c) is ``lokr_w1``, or ``lokr_w1_a`` (a, r) @ ``lokr_w1_b`` (r, c) with ``decompose_both``
  when r < max(a, c)/2;
* W2 (b, d[, *k]) is ``lokr_w2`` when r ≥ max(b, d)/2, else ``lokr_w2_a`` (b, r) @ ``lokr_w2_b``
  (r, d·∏k); with ``use_effective_conv2d`` on a k×k Conv2d it is the Tucker form
  ``lokr_t2`` (r, r, kh, kw), ``lokr_w2_a`` (r, b), ``lokr_w2_b`` (r, d).

Convolutions use in = in_channels/groups, so grouped convolutions merge exactly. Initialisation
as PEFT (``kaiming``): W1 (or W1a) = 0, the rest Kaiming-uniform (a=√5); ``lycoris``: W1 Kaiming,
W2 (or W2b) = 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _lycoris as ly
from .base import Adapter, BaseSpec, scaling, to_weight_layout

INITS = ("kaiming", "lycoris")


def factorization(dim: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dim`` = m·n with m ≤ n.

    With ``factor`` > 0 dividing ``dim``: (factor, dim/factor) (unordered, as LyCORIS does).
    Otherwise the divisor pair with the smallest sum whose smaller member is ≤ ``factor``
    (any, for -1), i.e. the pair closest to √dim. Examples: 256 -> (16, 16), 128 -> (8, 16),
    127 -> (1, 127), (128, factor=4) -> (4, 32).
    """
    if factor > 0 and dim % factor == 0:
        return factor, dim // factor
    limit = dim if factor == -1 else factor
    best = (1, dim)
    for m in range(2, math.isqrt(dim) + 1):
        if dim % m == 0 and m <= limit:
            best = (m, dim // m)
    return best


class LokrAdapter(Adapter):
    """LoKr factors for one Linear/Conv base layer (see module docstring)."""

    INITS = INITS

    def __init__(self, spec: BaseSpec, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 init: str | None = "kaiming", base: nn.Module | None = None, decompose_factor: int = -1,
                 decompose_both: bool = False, use_effective_conv2d: bool = False):
        super().__init__(spec, dropout)
        ly.check_kind(spec, "lokr")
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scale = scaling(r, alpha, use_rslora)
        a, b = factorization(spec.out_features, decompose_factor)
        c, d = factorization(ly.in_per_group(spec), decompose_factor)
        kernel = tuple(spec.kernel_size)
        self.factors = (a, b, c, d)
        if decompose_both and r < max(a, c) / 2:
            self.lokr_w1_a = nn.Parameter(torch.zeros(a, r))
            self.lokr_w1_b = nn.Parameter(torch.zeros(r, c))
        else:
            self.lokr_w1 = nn.Parameter(torch.zeros(a, c))
        self.core_kernel = None
        if r >= max(b, d) / 2:
            self.lokr_w2 = nn.Parameter(torch.zeros(b, d, *kernel))
        else:
            self.core_kernel = ly.tucker_kernel(spec, use_effective_conv2d, "lokr")
            if self.core_kernel is not None:
                self.lokr_t2 = nn.Parameter(torch.zeros(r, r, *self.core_kernel))
                self.lokr_w2_a = nn.Parameter(torch.zeros(r, b))
                self.lokr_w2_b = nn.Parameter(torch.zeros(r, d))
            else:
                self.lokr_w2_a = nn.Parameter(torch.zeros(b, r))
                self.lokr_w2_b = nn.Parameter(torch.zeros(r, d * math.prod(kernel)))
        if init is not None:
            self.reset(init)

    @staticmethod
    def config_options(config) -> dict:
        return {"decompose_factor": config.decompose_factor, "decompose_both": config.decompose_both,
                "use_effective_conv2d": config.use_effective_conv2d}

    @torch.no_grad()
    def reset(self, init: str = "kaiming") -> None:
        if init not in INITS:
            raise ValueError(f"unknown init {init!r} for lokr; expected one of {INITS}.")
        for p in self.parameters():
            ly.kaiming(p)
        if init == "kaiming":  # PEFT: the first factor starts at zero
            nn.init.zeros_(self.lokr_w1 if hasattr(self, "lokr_w1") else self.lokr_w1_a)
        else:  # LyCORIS: the second factor starts at zero
            nn.init.zeros_(self.lokr_w2 if hasattr(self, "lokr_w2") else self.lokr_w2_b)

    def _w1(self) -> torch.Tensor:
        return self.lokr_w1 if hasattr(self, "lokr_w1") else self.lokr_w1_a @ self.lokr_w1_b

    def _w2(self) -> torch.Tensor:
        if hasattr(self, "lokr_w2"):
            return self.lokr_w2
        if self.core_kernel is not None:
            w2 = ly.tucker_rebuild(self.lokr_t2, self.lokr_w2_a, self.lokr_w2_b)
            return w2.reshape(w2.shape[0], w2.shape[1], *self.spec.kernel_size)
        a, b, c, d = self.factors
        return (self.lokr_w2_a @ self.lokr_w2_b).reshape(b, d, *self.spec.kernel_size)

    def delta_weight(self) -> torch.Tensor:
        w1, w2 = self._w1(), self._w2()
        w1 = w1.reshape(*w1.shape, *([1] * (w2.ndim - 2)))  # kron over the kernel dims leaves them to W2
        delta = torch.kron(w1, w2) * self.scale
        return to_weight_layout(self.spec, delta)
