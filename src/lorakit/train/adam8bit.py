"""AdamW with 8-bit blockwise-quantised moments (after Dettmers et al. 2022, arXiv 2110.02861).

Each moment tensor is split into blocks of 256 values; a block stores one fp32 absmax and 256
uint8 codes, about 1.016 B per value instead of 4 (so m and v take ~2.03 B per parameter, not 8).
Codes follow a power-law codebook, dense near zero where most moments lie:

    m:  code = round(127 * cbrt(m / absmax)) + 127        m = absmax * ((code - 127) / 127)^3
    v:  code = round(255 * (v / absmax)^(1/4))            v = absmax * (code / 255)^4

(bitsandbytes uses a "dynamic tree" codebook; the power law has a similar range, 2e-10 relative for v,
and is closed-form, so quantising is two elementwise ops.) Every step dequantises, runs the ordinary
AdamW update in fp32, and requantises. Tensors smaller than ``min_8bit_size`` keep fp32 moments, as
in bitsandbytes. On CUDA with bitsandbytes installed, ``make_adamw8bit`` returns ``bnb.optim.AdamW8bit``.
"""

from __future__ import annotations

import torch

BLOCK = 256


def _blocks(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    flat = x.reshape(-1)
    pad = (-flat.numel()) % BLOCK
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, BLOCK), pad


def quantize(x: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes of shape (blocks, 256), fp32 absmax per block)."""
    b, _ = _blocks(x.float())
    absmax = b.abs().amax(dim=1).clamp_min(1e-30)
    u = b / absmax[:, None]
    if signed:
        codes = torch.round(127 * torch.sign(u) * u.abs().pow(1 / 3)) + 127
    else:
        codes = torch.round(255 * u.clamp_min(0).pow(0.25))
    return codes.to(torch.uint8), absmax


def dequantize(codes: torch.Tensor, absmax: torch.Tensor, shape, signed: bool) -> torch.Tensor:
    c = codes.float()
    u = ((c - 127) / 127).pow(3) if signed else (c / 255).pow(4)
    n = 1
    for s in shape:
        n *= s
    return (u * absmax[:, None]).reshape(-1)[:n].view(shape)


class AdamW8bit(torch.optim.Optimizer):
    """AdamW (decoupled weight decay, bias correction) whose moments are stored in 8 bits."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, min_8bit_size=4096):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      min_8bit_size=min_8bit_size))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                st = self.state[p]
                quantised = p.numel() >= group["min_8bit_size"]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    if quantised:
                        for k, signed in (("m", True), ("v", False)):
                            st[f"{k}_codes"], st[f"{k}_absmax"] = quantize(torch.zeros_like(g), signed)
                    else:
                        st["m"], st["v"] = torch.zeros_like(g), torch.zeros_like(g)
                st["step"] += 1
                t = st["step"].item()
                if quantised:
                    m = dequantize(st["m_codes"], st["m_absmax"], g.shape, True)
                    v = dequantize(st["v_codes"], st["v_absmax"], g.shape, False)
                else:
                    m, v = st["m"], st["v"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                if quantised:
                    st["m_codes"], st["m_absmax"] = quantize(m, True)
                    st["v_codes"], st["v_absmax"] = quantize(v, False)
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                denom = (v / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
                update = (m / (1 - beta1 ** t)) / denom
                p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors."""
    return sum(v.numel() * v.element_size() for st in optimizer.state.values()
               for v in st.values() if isinstance(v, torch.Tensor))


def make_adamw8bit(params, device: torch.device, **kwargs) -> torch.optim.Optimizer:
    if device.type == "cuda":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kwargs)
        except ImportError:
            pass
    return AdamW8bit(params, **kwargs)
