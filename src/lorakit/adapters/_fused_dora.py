"""Fused DoRA linear: y = c ⊙ (x Wᵀ + s·(x Aᵀ) Bᵀ) + b, with c = m/n and n = ‖W + s·BA‖ detached.

PEFT runs the base GEMM, forms B·A densely, then a chain of elementwise ops that autograd
differentiates one by one. Here the forward is one base GEMM, the rank-r update added inside BLAS
(``addmm_``), and the per-output scale and bias applied in place. The backward is written out:

    z  = (y − b)/c                   (never stored: recovered from the output)
    dm = Σ_t dy ⊙ z / n = (Σ_t dy ⊙ y − b·Σ_t dy) / m     (one dot per output column)
    dz = dy ⊙ c;  g = dz B
    dx = dz W + s·g A;  dA = s·gᵀ x;  dB = s·dzᵀ u   with u = x Aᵀ saved from the forward
(dz is never formed when W ⊙ c is smaller: dz W = dy (c ⊙ W), dz B = dy (c ⊙ B), dzᵀu = c ⊙ (dyᵀu).)
Saved: x (usually alive anyway), u (T×r) and y (the output, which the next op usually keeps too).
"""

from __future__ import annotations

import torch


class DoraLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, magnitude, norm, scale: float, fan_in_fan_out: bool):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        w = weight.t() if fan_in_fan_out else weight  # (out, in)
        y = x2 @ w.t()
        u = x2 @ lora_a.t()
        y.addmm_(u, lora_b.t(), alpha=scale)
        c = magnitude / norm
        y.mul_(c)
        if bias is not None:
            y.add_(bias)
        ctx.save_for_backward(x2, u, weight, bias, lora_a, lora_b, magnitude, norm, c, y)
        ctx.scale, ctx.fifo, ctx.in_shape = scale, fan_in_fan_out, shape
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, u, weight, bias, lora_a, lora_b, magnitude, norm, c, y = ctx.saved_tensors
        s = ctx.scale
        need_x, need_w, need_bias, need_a, need_b, need_m = ctx.needs_input_grad[:6]
        dy2 = dy.reshape(-1, dy.shape[-1])
        w = weight.t() if ctx.fifo else weight  # (out, in)
        dx = dw = dbias = da = db = dm = None
        dsum = dy2.sum(0) if (need_bias or (need_m and bias is not None)) else None
        if need_bias:
            dbias = dsum
        if need_m:
            # Σ_t dy ⊙ y; vecdot makes a tokens × out temporary, the forms without one were slower
            t = torch.linalg.vecdot(dy2, y, dim=0)
            if bias is not None:
                t -= bias * dsum
            dm = t / magnitude
            if not magnitude.all():  # c = 0 somewhere, so z cannot come from y: recompute those columns
                zero = (magnitude == 0).nonzero().flatten()
                z = x2 @ w[zero].t() + s * (u @ lora_b[zero].t())
                dm[zero] = (dy2[:, zero] * z).sum(0) / norm[zero]
        col = c[:, None]
        # dz = dy ⊙ c feeds three products; when there are more tokens than inputs it is cheaper to
        # scale W and B (out × in, out × r) than to form dz (tokens × out).
        scale_weights = w.shape[1] < dy2.shape[0]
        dz = None if scale_weights else dy2 * c
        if need_x or need_a:
            g = dy2 @ (lora_b * col) if scale_weights else dz @ lora_b
        if need_x:
            dx = dy2 @ (w * col) if scale_weights else dz @ w
            dx.addmm_(g, lora_a, alpha=s)
            dx = dx.view(ctx.in_shape)
        if need_a:
            da = torch.mm(g.t(), x2).mul_(s)
        if need_b:
            db = torch.mm(dy2.t(), u).mul_(col * s) if scale_weights else torch.mm(dz.t(), u).mul_(s)
        if need_w:
            dw = torch.mm(dy2.t(), x2).mul_(col) if scale_weights else dz.t() @ x2
            dw = dw.t() if ctx.fifo else dw
        return dx, dw, dbias, da, db, dm, None, None, None


def dora_linear(x, weight, bias, lora_a, lora_b, magnitude, norm, scale: float, fan_in_fan_out: bool = False):
    """Fused forward/backward of a linear layer with one DoRA adapter (see module docstring)."""
    return DoraLinearFunction.apply(x, weight, bias, lora_a, lora_b, magnitude, norm, scale, fan_in_fan_out)
