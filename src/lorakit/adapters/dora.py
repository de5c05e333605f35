"""DoRA (Liu et al. 2024, arXiv 2402.09353): weight-decomposed low-rank adaptation.

    W' = m ⊙ V / ‖V‖_row,   V = W + s·B·A,   m ∈ ℝ^out initialised to ‖W‖_row (so W' = W at start)

‖·‖_row is the L2 norm of each output row over everything else (inputs, kernel taps; for an
embedding the column of the table that feeds one output dimension, as PEFT does). The norm is
detached from the graph (paper §4.3), so only m, A and B receive gradients through the
per-output scale c = m/‖V‖:

    y = base(x) + (c − 1)·(W x) + c·s·B A x          (bias not rescaled)

The norm never forms B·A (out × in). Per row i:

    ‖V_i‖² = ‖W_i‖² + 2s·Σ_j (W Aᵀ)_ij B_ij + s²·Σ_j (B (A Aᵀ))_ij B_ij

‖W_i‖² is cached and recomputed whenever the base weight changes (new storage or an in-place
write, tracked by torch's version counter); W Aᵀ costs out·in·r FLOPs once per step, not per token.

Strength σ (ComfyUI-style adapter weight) interpolates in weight space: W_σ = W + σ·(W' − W).
Merging writes W_σ and remembers c, so unmerge is exact: W = (W_σ − σ·c·s·BA)/(1 − σ + σ·c).
With several adapters on one layer DoRA rescales the output accumulated before it (as PEFT does)
and its norm is always that of the layer's stored weight, in the forward and in ``merge`` alike, so
a stack such as LoRA + DoRA gives the same output merged and unmerged, in any order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._fused_dora import dora_linear
from .base import BaseSpec, apply_weight, conv_nd
from .lora import LoraAdapter


class DoraAdapter(LoraAdapter):
    """LoRA factors plus a trainable magnitude ``magnitude`` (shape (out,)); see module docstring."""

    merge_reads_base = True  # LoraLayer passes the stored base weight to ``merge``

    def __init__(self, spec: BaseSpec, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, init: str | None = "kaiming", base: nn.Module | None = None):
        super().__init__(spec, r, alpha, dropout, use_rslora, init=None)
        self.magnitude = nn.Parameter(torch.ones(spec.out_features))
        self._wsq: tuple | None = None  # (weight identity, ‖W_i‖²)
        self._merged_scale: torch.Tensor | None = None  # c at merge time, for an exact unmerge
        self._merged_rows: tuple | None = None  # rows merge cannot invert (1 − σ + σc = 0)
        if init is not None:
            self.reset(init, base)

    @torch.no_grad()
    def reset(self, init: str, base: nn.Module | None = None) -> None:
        """Initialise A, B as LoRA does, then m = ‖W + s·BA‖_row (so the layer starts at W)."""
        if base is None:
            raise ValueError("DoRA needs the base layer to initialise its magnitude; pass base=<layer>.")
        super().reset(init, base)
        self.init_magnitude(base)

    @torch.no_grad()
    def init_magnitude(self, base: nn.Module) -> None:
        self.magnitude.copy_(self.weight_norm(base.weight).to(self.magnitude.dtype))

    # -- the row norm ‖W + s·BA‖ without forming BA --------------------------------------------------
    def _out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as (out, K): rows are output features."""
        if self.spec.kind == "embedding" or self.spec.fan_in_fan_out:
            return weight.t()
        return weight.reshape(weight.shape[0], -1)

    def _weight_sq(self, weight: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        # Only a Parameter has a stable identity; temporaries (merge inputs, dequantised 4-bit weights)
        # could reuse a freed address, so they are never cached. Writes through ``.data`` bypass the
        # version counter: change base weights with ``copy_`` under no_grad (as LoraLayer.merge does).
        if not isinstance(weight, nn.Parameter):
            return w2.pow(2).sum(1)
        key = (id(weight), weight.data_ptr(), weight._version, weight.dtype, tuple(weight.shape))
        if self._wsq is None or self._wsq[0] != key:
            self._wsq = (key, w2.pow(2).sum(1))
        return self._wsq[1]

    @torch.no_grad()
    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """‖W + s·BA‖ per output row (detached), by the expansion in the module docstring."""
        dtype = torch.promote_types(weight.dtype, torch.float32)
        w2 = self._out_in(weight.detach()).to(dtype)
        out, g = self.spec.out_features, self.spec.groups if self.spec.kind == "conv" else 1
        a = self.lora_A.detach().reshape(self.r, -1).to(dtype)  # (r, K)
        b = self.lora_B.detach().reshape(out, -1).to(dtype)  # (out, r/g)
        s = self.scale
        # 2s·rowsum((W Aᵀ) ⊙ B) + s²·rowsum((B A Aᵀ) ⊙ B) = rowsum(P ⊙ B), P = 2s·W Aᵀ + s²·B (A Aᵀ):
        # few, fused ops, since this runs for every adapted layer on every step
        if g == 1:  # plain mm: CPU bmm is several times slower for this (out, K) x (K, r) shape
            p = torch.addmm(w2 @ a.t(), b, a @ a.t(), beta=2 * s, alpha=s * s)  # (out, r)
            both = torch.linalg.vecdot(p, b)
        else:  # group i's outputs only see A's rows of group i
            a, b = a.reshape(g, self.r // g, -1), b.reshape(g, out // g, -1)
            p = torch.baddbmm(torch.bmm(w2.reshape(g, out // g, -1), a.transpose(1, 2)), b,
                              torch.bmm(a, a.transpose(1, 2)), beta=2 * s, alpha=s * s)  # (g, out/g, r/g)
            both = torch.linalg.vecdot(p, b).reshape(out)
        return both.add_(self._weight_sq(weight, w2).to(dtype)).clamp_min_(0).sqrt_().to(weight.dtype)

    # -- protocol ----------------------------------------------------------------------------------
    def _scale_vector(self, weight: torch.Tensor) -> torch.Tensor:
        return self.magnitude / self.weight_norm(weight).to(self.magnitude.dtype)

    def fused_forward(self, x: torch.Tensor, base: nn.Module, strength: float):
        """One-GEMM path for a Linear/Conv1D base at strength 1, or None where it does not apply."""
        if strength != 1.0 or self.spec.kind != "linear" or not self.fusable_on(x, base):
            return None
        norm = self.weight_norm(base.weight).to(self.magnitude.dtype)
        return dora_linear(x, base.weight, base.bias, self.lora_A, self.lora_B, self.magnitude, norm, self.scale,
                           self.spec.fan_in_fan_out)

    def _lora_out(self, h: torch.Tensor) -> torch.Tensor:
        spec, a, b = self.spec, self.lora_A, self.lora_B
        if spec.kind == "linear":
            return F.linear(F.linear(h, a), b)
        if spec.kind == "conv":
            return conv_nd(spec, conv_nd(spec, h, a), b, stride=1, padding=0, dilation=1)
        return F.embedding(h, a.t(), **spec.embedding_kwargs) @ b.t()

    def forward(self, x, result, base: nn.Module, strength: float = 1.0):
        weight = base.weight
        c = self._scale_vector(weight).to(result.dtype)
        if self.spec.kind == "conv":
            c = c.view(-1, *([1] * (result.dim() - 2)))
        h = self.drop(x).to(self.lora_A.dtype) if self.spec.kind != "embedding" else x
        if h is not x:  # dropout is live: the base term sees the same dropped input (PEFT does this too)
            base_out = apply_weight(self.spec, h.to(result.dtype), weight.to(result.dtype))
        else:
            bias = getattr(base, "bias", None)
            base_out = result
            if bias is not None:
                base_out = result - (bias.view(-1, *([1] * (result.dim() - 2))) if self.spec.kind == "conv" else bias)
        lora_out = self._lora_out(h).to(result.dtype)
        return result + strength * ((c - 1) * base_out + (c * self.scale) * lora_out)

    def _weight_bcast(self, c: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.spec.kind == "embedding" or self.spec.fan_in_fan_out:
            return c.view(1, -1)
        return c.view(-1, *([1] * (weight.dim() - 1)))

    @torch.no_grad()
    def merge(self, weight: torch.Tensor, strength: float = 1.0,
              base_weight: torch.Tensor | None = None) -> torch.Tensor:
        """W + σ·(c ⊙ (W + s·BA) − W), with c = m/‖W_stored + s·BA‖ from the layer's stored weight
        (``base_weight``, as the forward uses), so stacks with other adapters merge exactly."""
        c = self._scale_vector(weight if base_weight is None else base_weight).detach().to(weight.dtype)
        delta = self.delta_weight().detach().to(weight.dtype)
        denom = 1 - strength + strength * c
        self._merged_scale = c
        bad = (denom == 0).nonzero().flatten()
        self._merged_rows = (bad, self._out_in(weight)[bad].clone()) if bad.numel() else None
        cw = self._weight_bcast(c, weight)
        return weight + strength * (cw * (weight + delta) - weight)

    @torch.no_grad()
    def unmerge(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        if self._merged_scale is None:
            raise RuntimeError("this DoRA adapter was not merged by lorakit, so its merge scale is unknown; "
                               "merge it with lorakit.merge before calling unmerge.")
        c = self._merged_scale.to(weight.dtype)
        delta = self.delta_weight().detach().to(weight.dtype)
        denom = (1 - strength + strength * c)
        safe = torch.where(denom == 0, torch.ones_like(denom), denom)
        out = (weight - strength * self._weight_bcast(c, weight) * delta) / self._weight_bcast(safe, weight)
        if self._merged_rows is not None:
            idx, rows = self._merged_rows
            self._out_in(out)[idx] = rows
        self._merged_scale = self._merged_rows = None
        return out
