"""LoRA (Hu et al. 2021, arXiv 2106.09685): W' = W + s·B·A.

A is (r, in) and B is (out, r); s = alpha/r, or alpha/sqrt(r) with rsLoRA. The same two factors
serve every base layer kind:

* Linear / Conv1D: y += s·B(A(x)), fused with the base GEMM when it is the only live adapter.
* ConvNd: A is a convolution with the base kernel, stride, padding, dilation and groups
  (shape (r, in/g, *k)); B is a grouped 1×1 convolution (out, r/g, 1...). Each group's update
  is B_g·A_g, so grouped convolutions merge exactly (r must be divisible by groups). A lone
  adapter on a zero-padded Conv1d/2d/3d runs the fused kernel of ``_fused_conv``.
* Embedding: A is (r, num_embeddings), B is (dim, r); y += s·E_A[x]·Bᵀ, no dropout (indices).

Initialisations: ``kaiming`` (A Kaiming-uniform a=√5, B=0), ``gaussian`` (A ~ N(0, 1/r²), B=0),
``pissa`` (Meng et al. 2024: top-r SVD of W into A,B; W keeps the residual), ``olora``
(Büyükakyüz 2024: QR of W), and for embeddings A=0, B ~ N(0, 1), as PEFT does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._fused import lora_linear
from ._fused_conv import delta, lora_conv
from .base import Adapter, BaseSpec, conv_nd, scaling, to_weight_layout

INITS = ("kaiming", "gaussian", "pissa", "olora")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # exact types: a subclass may change forward


class LoraAdapter(Adapter):
    """Plain LoRA factors for one base layer (see module docstring for shapes and formula)."""

    def __init__(self, spec: BaseSpec, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, init: str | None = "kaiming", base: nn.Module | None = None):
        super().__init__(spec, 0.0 if spec.kind == "embedding" else dropout)
        if spec.kind == "conv" and r % spec.groups:
            raise ValueError(f"rank {r} is not divisible by the convolution's groups={spec.groups}; "
                             f"choose r as a multiple of {spec.groups} for this layer (rank_pattern can set it).")
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scale = scaling(r, alpha, use_rslora)
        a_shape, b_shape = _factor_shapes(spec, r)
        self.lora_A = nn.Parameter(torch.zeros(a_shape))
        self.lora_B = nn.Parameter(torch.zeros(b_shape))
        if init is not None:
            self.reset(init, base)

    # -- initialisation -------------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, init: str, base: nn.Module | None = None) -> None:
        """(Re)initialise the factors; ``pissa``/``olora`` also rewrite the base weight in place."""
        if self.spec.kind == "embedding":
            nn.init.zeros_(self.lora_A)
            nn.init.normal_(self.lora_B)
        elif init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)
        elif init == "gaussian":
            nn.init.normal_(self.lora_A, std=1 / self.r)
            nn.init.zeros_(self.lora_B)
        elif init in ("pissa", "olora"):
            self._principal_init(init, base)
        else:
            raise ValueError(f"unknown init {init!r}; expected one of {INITS}.")

    def _principal_init(self, init: str, base: nn.Module | None) -> None:
        if self.spec.kind != "linear" or base is None:
            raise ValueError(f"init={init!r} needs a Linear/Conv1D base layer, got kind {self.spec.kind!r}; "
                             "use init='kaiming' for this layer.")
        weight = base.weight
        w = weight.detach().float()
        w = w.t() if self.spec.fan_in_fan_out else w  # (out, in)
        if init == "pissa":
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            sr = s[: self.r] / self.scale
            a = torch.diag(sr.sqrt()) @ vh[: self.r]
            b = u[:, : self.r] @ torch.diag(sr.sqrt())
        else:
            q, rr = torch.linalg.qr(w)
            a, b = rr[: self.r], q[:, : self.r]
        self.lora_A.copy_(a)
        self.lora_B.copy_(b)
        residual = w - self.scale * (b @ a)
        weight.copy_(to_weight_layout(self.spec, residual).to(weight.dtype))

    # -- protocol ---------------------------------------------------------------------------------
    def delta_weight(self) -> torch.Tensor:
        a, b, spec = self.lora_A, self.lora_B, self.spec
        if spec.kind == "conv":
            return delta(a, b, spec.groups).reshape(spec.out_features, *a.shape[1:]) * self.scale
        return to_weight_layout(spec, (b @ a) * self.scale)

    def fusable_on(self, x: torch.Tensor, base: nn.Module) -> bool:
        """Whether a fused kernel may run: a dense Linear/Conv1D or a plain zero-padded ConvNd base, no
        live dropout, one dtype, no autocast."""
        weight = getattr(base, "weight", None)
        kind = self.spec.kind
        return ((kind == "linear" or (kind == "conv" and type(base) in _CONVS and self.spec.padding_mode == "zeros"
                                        and x.ndim == len(self.spec.kernel_size) + 2))  # batched input
                and type(weight) is nn.Parameter
                and not (self.training and self.dropout > 0)
                and x.dtype == weight.dtype == self.lora_A.dtype
                and not torch.is_autocast_enabled(x.device.type))

    def fused_forward(self, x: torch.Tensor, base: nn.Module, strength: float):
        if not self.fusable_on(x, base):
            return None
        if self.spec.kind == "conv":
            return lora_conv(x, base.weight, base.bias, self.lora_A, self.lora_B, self.scale * strength,
                             self.spec.conv_kwargs)
        return lora_linear(x, base.weight, base.bias, self.lora_A, self.lora_B, self.scale * strength,
                           self.spec.fan_in_fan_out)

    def forward(self, x, result, base: nn.Module, strength: float = 1.0):
        spec, s = self.spec, self.scale * strength
        a, b = self.lora_A, self.lora_B
        if spec.kind == "linear":
            h = self.drop(x).to(a.dtype)
            u = F.linear(h, a)
            return result + F.linear(u, b).mul_(s).to(result.dtype)
        if spec.kind == "conv":
            h = self.drop(x).to(a.dtype)
            u = conv_nd(spec, h, a)
            up = conv_nd(spec, u, b, stride=1, padding=0, dilation=1)
            return result + up.mul_(s).to(result.dtype)
        u = F.embedding(x, a.t(), **spec.embedding_kwargs)
        return result + (u @ b.t()).mul_(s).to(result.dtype)


def _factor_shapes(spec: BaseSpec, r: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if spec.kind == "conv":
        ones = (1,) * len(spec.kernel_size)
        return ((r, spec.in_features // spec.groups, *spec.kernel_size),
                (spec.out_features, r // spec.groups, *ones))
    return (r, spec.in_features), (spec.out_features, r)
