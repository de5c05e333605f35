"""Fused LoRA convolution: y = conv(x, W) + b + s·conv₁ₓ₁(conv(x, A), B) with hand-written backward.

A is (r, in/g, *k) with the base layer's stride/padding/dilation/groups; B is a grouped 1×1
convolution (out, r/g). Autograd on the two-conv graph (PEFT's, and lorakit's generic path) builds
the B output, scales it, adds it as a new tensor, then in backward scales dy again and sums two
input-sized dx tensors. Here the 1×1 B update is a batched GEMM added into the base output in
place (``baddbmm_`` with ``alpha=s``), and the backward reuses one g = Bᵀ·dy for dA and dx:

    g  = Bᵀ dy                                  (per group; N × r × L)
    dx = conv_inputgrad(dy, W) + s·conv_inputgrad(g, A)
    dA = s·conv_weightgrad(g, x),  dB = s·Σₙ dyₙ uₙᵀ   with u = conv(x, A) saved from the forward
A pointwise base (1×1, stride 1, no padding, e.g. SD's proj_in/proj_out) runs A and its gradients
as GEMMs over the flattened pixels, so the rank-r terms go into dx in place too. Only x and u (r
channels) are kept for backward.

Where ``_fused.dense_is_cheaper`` says so (narrow layers, fp32), the dense form runs instead: the base
conv with W' = W + s·ΔW, and dA, dB from the weight gradient G of W' (``_fused.factor_grads``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._fused import dense_is_cheaper, factor_grads

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _grouped(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, *spatial) -> (N·g, C/g, L): each sample's group as one batch entry of a GEMM."""
    return t.reshape(t.shape[0] * groups, t.shape[1] // groups, -1)


def _per_batch(w: torch.Tensor, groups: int, n: int) -> torch.Tensor:
    """A 1×1-style weight (out, in/g, 1...) as (N·g, out/g, in/g) matching ``_grouped`` operands."""
    w3 = w.reshape(groups, w.shape[0] // groups, w.shape[1])
    return w3.unsqueeze(0).expand(n, *w3.shape).reshape(n * groups, *w3.shape[1:])


def _batch_sum(prod: torch.Tensor, n: int) -> torch.Tensor:
    """(N·g, a, b) -> (g·a, b): per-group weight gradients summed over the batch."""
    return prod.reshape(n, -1, prod.shape[-1]).sum(0)


def is_pointwise(kw: dict, kernel: tuple[int, ...]) -> bool:
    """A 1×1 convolution with stride 1 and no padding/dilation: a per-pixel linear map."""
    return all(k == 1 for k in kernel) and all(s == 1 for s in kw["stride"]) and not any(kw["padding"])


class LoraConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, kw: dict):
        g, n, conv = kw["groups"], x.shape[0], _CONV[x.ndim - 2]
        pointwise = is_pointwise(kw, tuple(weight.shape[2:])) and x.is_contiguous()
        tokens = x.numel() // x.shape[1] if pointwise else n * math.prod(_out_size(x, weight, kw))
        r = lora_a.shape[0]
        ctx.dense = dense_is_cheaper(tokens, lora_a.numel() // r, weight.shape[0] // g, r // g, x.dtype)
        if ctx.dense:  # conv with W' = W + s·ΔW, ΔW = B_g·A_g per group, in one batched GEMM
            w = torch.baddbmm(weight.reshape(g, weight.shape[0] // g, -1), lora_b.reshape(g, lora_b.shape[0] // g, -1),
                              lora_a.reshape(g, r // g, -1), alpha=scale).view_as(weight)
            y = conv(x, w, bias, **kw)
            ctx.save_for_backward(x, None, w, lora_a, lora_b)
        else:
            y = conv(x, weight, bias, **kw)
            if pointwise:
                u = torch.bmm(_per_batch(lora_a, g, n), _grouped(x, g)).view(n, lora_a.shape[0], *x.shape[2:])
            else:
                u = conv(x, lora_a, None, **kw)
            if y.is_contiguous():
                _grouped(y, g).baddbmm_(_per_batch(lora_b, g, n), _grouped(u, g), alpha=scale)
            else:  # e.g. a channels-last output: no flat view, add the 1×1 conv's output instead
                y.add_(conv(u, lora_b, None, groups=g), alpha=scale)
            ctx.save_for_backward(x, u, weight, lora_a, lora_b)
        ctx.scale, ctx.kw, ctx.pointwise, ctx.has_bias = scale, kw, pointwise, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, u, weight, lora_a, lora_b = ctx.saved_tensors
        s, kw, g, n = ctx.scale, ctx.kw, ctx.kw["groups"], x.shape[0]
        need_x, need_w, need_b, need_a, need_bb = ctx.needs_input_grad[:5]
        dy = dy.contiguous()
        dx = dw = db = da = dbb = None
        if ctx.dense:  # weight is W' here; dA, dB from G = dL/dW'
            need_g = need_w or need_a or need_bb
            if ctx.pointwise:
                dx = _conv_grads(dy, x, weight, kw, True, False)[0] if need_x else None
                dw = _batch_sum(torch.bmm(_grouped(dy, g), _grouped(x, g).transpose(1, 2)), n) if need_g else None
            else:
                dx, dw, _ = _conv_grads(dy, x, weight, kw, need_x, need_g)
            if need_g:
                da, dbb = factor_grads(dw, lora_a, lora_b, s, g)
                dw = dw.view_as(weight)
        else:
            dy3 = _grouped(dy, g)
            gr = torch.bmm(_per_batch(lora_b, g, n).transpose(1, 2), dy3) if (need_x or need_a) else None
            if need_x or need_w:
                dx, dw, _ = _conv_grads(dy, x, weight, kw, need_x, need_w)
            if need_x:
                if ctx.pointwise and dx.is_contiguous():
                    _grouped(dx, g).baddbmm_(_per_batch(lora_a, g, n).transpose(1, 2), gr, alpha=s)
                else:
                    dx.add_(_conv_grads(gr.view(u.shape), x, lora_a, kw, True, False)[0], alpha=s)
            if need_a:
                if ctx.pointwise:
                    da = _batch_sum(torch.bmm(gr, _grouped(x, g).transpose(1, 2)), n).view_as(lora_a).mul_(s)
                else:
                    da = _conv_grads(gr.view(u.shape), x, lora_a, kw, False, True)[1].mul_(s)
            if need_bb:
                dbb = _batch_sum(torch.bmm(dy3, _grouped(u, g).transpose(1, 2)), n).view_as(lora_b).mul_(s)
        if need_b and ctx.has_bias:
            db = dy.sum([0, *range(2, dy.ndim)])
        return dx, (dw if need_w else None), db, (da if need_a else None), (dbb if need_bb else None), None, None


def _out_size(x, weight, kw) -> list[int]:
    return [(size + 2 * p - d * (k - 1) - 1) // st + 1 for size, k, st, p, d in
            zip(x.shape[2:], weight.shape[2:], kw["stride"], kw["padding"], kw["dilation"], strict=True)]


def delta(lora_a: torch.Tensor, lora_b: torch.Tensor, groups: int) -> torch.Tensor:
    """Unscaled ΔW of a grouped conv LoRA: B_g·A_g per group, as (out, in/g·k...) rows."""
    b3 = lora_b.reshape(groups, lora_b.shape[0] // groups, -1)
    return torch.bmm(b3, lora_a.reshape(groups, lora_a.shape[0] // groups, -1)).reshape(lora_b.shape[0], -1)


def _conv_grads(grad, x, weight, kw, need_input: bool, need_weight: bool):
    """(dx, dweight, _) of conv(x, weight) for the output gradient ``grad`` (shaped like that output)."""
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, kw["stride"], kw["padding"], kw["dilation"], False, [0] * (x.ndim - 2),
        kw["groups"], [need_input, need_weight, False])


def lora_conv(x, weight, bias, lora_a, lora_b, scale: float, conv_kwargs: dict):
    """Fused forward/backward of a convolution plus one LoRA branch (see module docstring).

    ``conv_kwargs``: the base layer's stride/padding/dilation (tuples) and groups; zero padding only.
    """
    return LoraConvFunction.apply(x, weight, bias, lora_a, lora_b, scale, conv_kwargs)
