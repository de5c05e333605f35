"""Fused LoRA linear: y = x Wᵀ + b + s·(x Aᵀ) Bᵀ with hand-written backward.

Autograd on the unfused graph (PEFT's) runs a separate scale, add, scale-backward and gradient-sum
pass over full activations. Here the scale and the add ride inside BLAS (``addmm_`` with
``alpha``/``beta``), and the backward reuses one ``dy @ B`` product for both dA and dx:

    g  = dy B                       (T, r)
    dx = dy W + s·g A               (one GEMM, then an in-place rank-r update)
    dA = s·gᵀ x,  dB = s·dyᵀ u      with u = x Aᵀ saved from the forward
Only x (already alive in the caller for most models) and u (T×r) are kept for backward.
"""

from __future__ import annotations

import torch


class LoraLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, fan_in_fan_out: bool):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        w = weight.t() if fan_in_fan_out else weight  # (out, in)
        y = x2 @ w.t() if bias is None else torch.addmm(bias, x2, w.t())
        u = x2 @ lora_a.t()
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
        g = dy2 @ lora_b if (need_x or need_a) else None
        if need_x:
            dx = dy2 @ (weight.t() if ctx.fifo else weight)
            dx.addmm_(g, lora_a, alpha=s)
            dx = dx.view(ctx.in_shape)
        if need_a:
            da = torch.mm(g.t(), x2).mul_(s)
        if need_bb:
            dbb = torch.mm(dy2.t(), u).mul_(s)
        if need_b:
            db = dy2.sum(0)
        if need_w:
            dw = dy2.t() @ x2
            dw = dw.t() if ctx.fifo else dw
        return dx, dw, db, da, dbb, None, None


def lora_linear(x, weight, bias, lora_a, lora_b, scale: float, fan_in_fan_out: bool = False):
    """Fused forward/backward of a linear layer plus one LoRA branch (see module docstring)."""
    return LoraLinearFunction.apply(x, weight, bias, lora_a, lora_b, scale, fan_in_fan_out)
