"""LoRA on layers that read the same input (q, k, v and a DiT's MLP input) with one down-projection GEMM.

For members i = 1..k of a group reading the same x (T, in), with factors A_i (r_i, in), B_i (out_i, r_i):

    u   = x [A_1; ...; A_k]ᵀ            one (T, Σr) GEMM instead of k thin (T, r_i) ones
    y_i = x W_iᵀ + b_i + s_i·u_i B_iᵀ   per member (``lora_up``), u_i the i-th column block of u
    backward: du_i = s_i·dy_i B_i, dB_i = s_i·dy_iᵀ u_i per member, then once for the group
    dx += du [A_1; ...; A_k]  and  [dA_1; ...; dA_k] = duᵀ x   (du = [du_1 ... du_k], (T, Σr))

The same multiply-adds as k separate fused layers (``_fused``), in 3 GEMMs per group instead of 3k
thin ones: a (T, in) × (in, Σr) GEMM runs at a higher rate than k (T, in) × (in, r) ones, and each
call saved is a fixed cost. Members that share one A (kohya's fused q/k/v layout) share u too: their
down GEMMs, dA and rank-r dx term are done once, not k times (their du's are summed by autograd).
"""

from __future__ import annotations

import torch

from ._fused import _scaled


class SharedDownFunction(torch.autograd.Function):
    """(u_1, ..., u_m) = column blocks of x [A_1; ...; A_m]ᵀ for m distinct factors."""

    @staticmethod
    def forward(ctx, x2, *factors):
        a = factors[0] if len(factors) == 1 else torch.cat(factors)
        u = torch.mm(x2, a.t())
        ctx.save_for_backward(x2, a)
        ctx.ranks = [f.shape[0] for f in factors]
        return tuple(u.split(ctx.ranks, dim=1)) if len(factors) > 1 else u

    @staticmethod
    def backward(ctx, *dus):
        x2, a = ctx.saved_tensors
        dus = [torch.zeros(x2.shape[0], r, dtype=x2.dtype, device=x2.device) if d is None else d
               for d, r in zip(dus, ctx.ranks, strict=True)]
        du = dus[0] if len(dus) == 1 else torch.cat(dus, dim=1)
        dx = torch.mm(du, a) if ctx.needs_input_grad[0] else None
        da = torch.mm(du.t(), x2)
        return (dx, *da.split(ctx.ranks))


def shared_down(x2: torch.Tensor, factors: list[torch.Tensor]) -> list[torch.Tensor]:
    """u_i = x2 A_iᵀ for each distinct factor in one GEMM (x2 is (T, in), 2-D)."""
    out = SharedDownFunction.apply(x2, *factors)
    return [out] if len(factors) == 1 else list(out)


class LoraUpFunction(torch.autograd.Function):
    """y = x Wᵀ + b + s·u Bᵀ with u given (see module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, u, lora_b, scale: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias, x2, weight.t())
        y.addmm_(u, lora_b.t(), alpha=scale)
        ctx.save_for_backward(x2 if ctx.needs_input_grad[1] else None, weight, u, lora_b)
        ctx.scale, ctx.in_shape = scale, shape
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, weight, u, lora_b = ctx.saved_tensors
        s = ctx.scale
        need_x, need_w, need_b, need_u, need_bb = ctx.needs_input_grad[:5]
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = torch.mm(dy2, weight).view(ctx.in_shape) if need_x else None
        dw = torch.mm(dy2.t(), x2) if need_w else None
        db = dy2.sum(0) if need_b else None
        du = _scaled(torch.mm(dy2, lora_b), s) if need_u else None
        dbb = _scaled(torch.mm(dy2.t(), u), s) if need_bb else None
        return dx, dw, db, du, dbb, None


def lora_up(x, weight, bias, u, lora_b, scale: float):
    """A Linear's output plus its LoRA update from a precomputed down-projection u (2-D, (T, r))."""
    return LoraUpFunction.apply(x, weight, bias, u, lora_b, scale)
