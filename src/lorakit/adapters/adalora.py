"""AdaLoRA's SVD-form layer (Zhang et al. 2023, arXiv 2303.10512): ΔW = s · P Λ Q.

* ``lora_A`` = Q (r, in[/groups·∏kernel]) right singular vectors,
* ``lora_E`` = λ (r, 1) singular values, Λ = diag(λ),
* ``lora_B`` = P (out, r) left singular vectors,

with s = alpha / ranknum, where ranknum is the *initial* rank and never changes when ranks are
pruned (PEFT's rule; PEFT adds 1e-5 to the denominator, a 1e-6 relative difference). Init as the
paper's code and PEFT: Λ = 0, P and Q ~ N(0, 0.02²), so a fresh adapter is the identity.

Pruning only zeroes entries of λ (the rank allocator in :mod:`lorakit.train.adalora` does it), so
P and Q keep training and a pruned triplet can come back. ``keep(mask)`` physically drops triplets
(used when loading PEFT's trimmed files); the scale stays alpha/ranknum.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Adapter, BaseSpec, scaling, to_weight_layout

#: "kaiming" is accepted as the variant's default init name; AdaLoRA's init is always Λ=0, P,Q ~ N(0, 0.02²).
INITS = ("kaiming", "gaussian")


class AdaLoraAdapter(Adapter):
    """P Λ Q factors for one Linear/Conv1D/Conv base layer (see module docstring)."""

    INITS = INITS

    def __init__(self, spec: BaseSpec, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
                 init: str | None = "kaiming", base: nn.Module | None = None):
        super().__init__(spec, dropout)
        if spec.kind == "embedding":
            raise ValueError("variant 'adalora' adapts Linear/Conv1D and Conv layers, not nn.Embedding; exclude "
                             "the embedding (exclude_modules) or use variant='lora' for it.")
        self.ranknum, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scale = scaling(r, alpha, use_rslora)
        in_f = spec.in_features // spec.groups if spec.kind == "conv" else spec.in_features
        in_f *= math.prod(spec.kernel_size)
        self.lora_A = nn.Parameter(torch.zeros(r, in_f))
        self.lora_E = nn.Parameter(torch.zeros(r, 1))
        self.lora_B = nn.Parameter(torch.zeros(spec.out_features, r))
        if init is not None:
            self.reset()

    @property
    def r(self) -> int:
        """Current number of triplets (the initial rank unless ``keep`` dropped some)."""
        return self.lora_E.shape[0]

    @torch.no_grad()
    def reset(self, init: str = "kaiming") -> None:
        nn.init.zeros_(self.lora_E)
        nn.init.normal_(self.lora_A, std=0.02)
        nn.init.normal_(self.lora_B, std=0.02)

    @torch.no_grad()
    def keep(self, mask: torch.Tensor) -> None:
        """Drop the triplets where ``mask`` (r,) is False; the scale keeps the initial rank."""
        mask = mask.to(torch.bool).flatten()
        if mask.numel() != self.r:
            raise ValueError(f"rank mask has {mask.numel()} entries but this layer has {self.r} triplets; "
                             "the rank pattern belongs to another adapter (different init_r).")
        idx = mask.nonzero().flatten().to(self.lora_E.device)
        for name, dim in (("lora_A", 0), ("lora_E", 0), ("lora_B", 1)):
            old = getattr(self, name)
            setattr(self, name, nn.Parameter(old.index_select(dim, idx).clone(), requires_grad=old.requires_grad))

    def delta_weight(self) -> torch.Tensor:
        delta = self.lora_B @ (self.lora_A * self.lora_E) * self.scale  # (out, in·k)
        if self.spec.kind == "conv":
            return delta.reshape(self.spec.out_features, -1, *self.spec.kernel_size)
        return to_weight_layout(self.spec, delta)

    def forward(self, x, result, base: nn.Module, strength: float = 1.0):
        if self.spec.kind != "linear":
            return super().forward(x, result, base, strength)
        a = self.lora_A * self.lora_E  # (r, in): Λ Q
        h = F.linear(F.linear(self.drop(x).to(a.dtype), a), self.lora_B)
        return result + h.mul_(self.scale * strength).to(result.dtype)

    def orthogonality(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(||QQᵀ − I||_F, ||PᵀP − I||_F), the paper's regulariser terms (unsquared, as its code and PEFT)."""
        q, p = self.lora_A, self.lora_B
        eye = torch.eye(self.r, device=q.device, dtype=q.dtype)
        return torch.linalg.matrix_norm(q @ q.T - eye), torch.linalg.matrix_norm(p.T @ p - eye)
