"""Fused LoRA linear: y = x Wᵀ + b + s·(x Aᵀ) Bᵀ with hand-written backward.

Autograd on the unfused graph (PEFT's) runs a separate scale, add, scale-backward and gradient-sum
pass over full activations. Here the scale and the add ride inside BLAS (``addmm_`` with
``alpha``/``beta``), and the backward reuses one ``dy @ B`` product for both dA and dx
(the *factored* form):

    g  = dy B                       (T, r)
    dx = dy W + s·g A               (one GEMM, then an in-place rank-r update)
    dA = s·gᵀ x,  dB = s·dyᵀ u      with u = x Aᵀ saved from the forward
Only x (already alive in the caller for most models) and u (T×r) are kept for backward.

When the layer is narrow next to the rank (e.g. 64 channels at r=16, as in SD's first U-Net level),
the *dense* form is cheaper: W' = W + s·BA once per call, then the base GEMMs with W' and one
weight-gradient GEMM G = dyᵀx, from which dA = s·Bᵀ G and dB = s·G Aᵀ (the chain rule through
W' = W + s·BA). ``dense_is_cheaper`` picks the form per call from the multiply-add counts.
The dense form is used in fp32/fp64 only: in half precision W' would round away a small s·BA.
"""

from __future__ import annotations

import torch

# The factored form's multiply-adds are thin GEMMs (one side is r wide) that run at about half the
# rate of the dense weight-gradient GEMM on CPU BLAS (measured on SD1-shaped layers, 64-1024 wide, r=16);
# the dense form must win by this factor to be chosen.
THIN_GEMM_COST = 1.7


def dense_is_cheaper(tokens: int, fan_in: int, fan_out: int, rank: int, dtype: torch.dtype) -> bool:
    """Whether the dense form (W' = W + s·BA, G = dyᵀx) costs less than the factored one for one layer.

    Multiply-adds beyond the base GEMMs, per group: factored 3·T·r·(in + out) (u, the update, g, the
    rank-r dx term, dA, dB); dense T·in·out (G) + 3·in·out·r (W', dA, dB).
    """
    if dtype not in (torch.float32, torch.float64):
        return False
    dense = tokens * fan_in * fan_out + 3 * fan_in * fan_out * rank
    return dense < THIN_GEMM_COST * 3 * tokens * rank * (fan_in + fan_out)


def factor_grads(grad_w: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float,
                 groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(dA, dB) from the gradient G of W' = W + s·BA (per group: dA = s·Bᵀ G, dB = s·G Aᵀ)."""
    if groups == 1:  # plain GEMMs: fewer ops than the batched form (this runs once per layer and step)
        a2, b2 = lora_a.reshape(lora_a.shape[0], -1), lora_b.reshape(lora_b.shape[0], -1)
        g2 = grad_w.reshape(grad_w.shape[0], -1)
        return torch.mm(b2.t(), g2).mul_(scale).view_as(lora_a), torch.mm(g2, a2.t()).mul_(scale).view_as(lora_b)
    a3 = lora_a.reshape(groups, lora_a.shape[0] // groups, -1)
    b3 = lora_b.reshape(groups, lora_b.shape[0] // groups, -1)
    g3 = grad_w.reshape(groups, grad_w.shape[0] // groups, -1)
    da = torch.bmm(b3.transpose(1, 2), g3).mul_(scale)
    db = torch.bmm(g3, a3.transpose(1, 2)).mul_(scale)
    return da.view_as(lora_a), db.view_as(lora_b)


class LoraLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, fan_in_fan_out: bool):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        w = weight.t() if fan_in_fan_out else weight  # (out, in)
        ctx.dense = dense_is_cheaper(x2.shape[0], w.shape[1], w.shape[0], lora_a.shape[0], x.dtype)
        if ctx.dense:
            w = torch.addmm(w, lora_b, lora_a, alpha=scale)  # W' = W + s·BA
            y = torch.mm(x2, w.t()) if bias is None else torch.addmm(bias, x2, w.t())
            ctx.save_for_backward(x2, None, w, lora_a, lora_b)
        else:
            y = torch.mm(x2, w.t()) if bias is None else torch.addmm(bias, x2, w.t())
            u = torch.mm(x2, lora_a.t())
            y.addmm_(u, lora_b.t(), alpha=scale)
            ctx.save_for_backward(x2, u, weight, lora_a, lora_b)
        ctx.scale, ctx.fifo, ctx.in_shape = scale, fan_in_fan_out, shape
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, u, weight, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scale
        need_x, need_w, need_b, need_a, need_bb = ctx.needs_input_grad[:5]
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = dw = db = da = dbb = None
        if ctx.dense:  # weight is W' (out, in) here
            if need_x:
                dx = torch.mm(dy2, weight).view(ctx.in_shape)
            if need_w or need_a or need_bb:
                gw = torch.mm(dy2.t(), x2)
                da, dbb = factor_grads(gw, lora_a, lora_b, s)
                dw = gw.t() if ctx.fifo else gw
        else:
            g = torch.mm(dy2, lora_b) if (need_x or need_a) else None
            if need_x:
                dx = torch.mm(dy2, weight.t() if ctx.fifo else weight)
                dx.addmm_(g, lora_a, alpha=s)
                dx = dx.view(ctx.in_shape)
            if need_a:
                da = _scaled(torch.mm(g.t(), x2), s)
            if need_bb:
                dbb = _scaled(torch.mm(dy2.t(), u), s)
            if need_w:
                dw = torch.mm(dy2.t(), x2)
                dw = dw.t() if ctx.fifo else dw
        if need_b:
            db = dy2.sum(0)
        return dx, (dw if need_w else None), db, (da if need_a else None), (dbb if need_bb else None), None, None


def _scaled(t: torch.Tensor, s: float) -> torch.Tensor:
    return t if s == 1.0 else t.mul_(s)  # alpha = r: no pass over the gradient


def lora_linear(x, weight, bias, lora_a, lora_b, scale: float, fan_in_fan_out: bool = False):
    """Fused forward/backward of a linear layer plus one LoRA branch (see module docstring)."""
    return LoraLinearFunction.apply(x, weight, bias, lora_a, lora_b, scale, fan_in_fan_out)
