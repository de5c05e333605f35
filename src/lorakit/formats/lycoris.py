"""Dense updates ΔW of one file module, for every algorithm a kohya-style file can hold.

All math runs in fp32 and returns ΔW already multiplied by the module's scale (alpha/r):

* LoRA / LoCon (Hu et al. 2021): ΔW = s·up·down; a 3x3 ``down`` keeps its kernel, ``up`` is 1x1.
  Tucker (``lora_mid``, LyCORIS): ΔW[o,i,h,w] = s·Σ up[o,a]·mid[a,b,h,w]·down[b,i].
* LoHa (Hyeon-Woo et al. 2022, FedPara): ΔW = s·(w1a·w1b) ⊙ (w2a·w2b); Tucker: t ×₁ w_a ×₂ w_b.
* LoKr (Yeh et al. 2024, LyCORIS): ΔW = s·kron(w1, w2), w1/w2 full or factored; s = 1 when
  neither factor is low-rank (the stored alpha is not divided).
* full: ΔW = diff.
* DoRA (Liu et al. 2024, ``dora_scale``): W' = m·(W+ΔW)/‖W+ΔW‖ with the norm per output row when
  ``dora_scale`` has ``out`` rows (LyCORIS ``wd_on_output``), else per input column (old layout); the
  update returned is W' − W, which strengths multiply (ComfyUI's rule).
"""

from __future__ import annotations

import torch

from .lorafile import module_algo, scale_of

EPS = torch.finfo(torch.float32).eps


def _f(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32)


def _tucker(t, wa, wb):
    # t (r, r, k, k), wa (r, out), wb (r, in) -> (out, in, k, k)
    return torch.einsum("ijkl,jr,ip->prkl", _f(t), _f(wb), _f(wa))


def _lora(m: dict) -> torch.Tensor:
    up, down = _f(m["lora_up.weight"]), _f(m["lora_down.weight"])
    if "lora_mid.weight" in m:
        return torch.einsum("oa,abhw,bi->oihw", up.flatten(1), _f(m["lora_mid.weight"]), down.flatten(1))
    return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])


def _loha(m: dict) -> torch.Tensor:
    if "hada_t1" in m:
        w1 = _tucker(m["hada_t1"], m["hada_w1_a"], m["hada_w1_b"])
        w2 = _tucker(m["hada_t2"], m["hada_w2_a"], m["hada_w2_b"])
        return w1 * w2
    return (_f(m["hada_w1_a"]) @ _f(m["hada_w1_b"])) * (_f(m["hada_w2_a"]) @ _f(m["hada_w2_b"]))


def _lokr(m: dict) -> torch.Tensor:
    w1 = _f(m["lokr_w1"]) if "lokr_w1" in m else _f(m["lokr_w1_a"]) @ _f(m["lokr_w1_b"])
    if "lokr_w2" in m:
        w2 = _f(m["lokr_w2"])
    elif "lokr_t2" in m:
        w2 = _tucker(m["lokr_t2"], m["lokr_w2_a"], m["lokr_w2_b"])
    else:
        w2 = _f(m["lokr_w2_a"]) @ _f(m["lokr_w2_b"])
    if w2.dim() == 4 and w1.dim() == 2:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2)


def _full(m: dict) -> torch.Tensor:
    if "diff_b" in m:
        raise ValueError("full-weight modules with a bias delta (diff_b) are not supported yet; "
                         "the bias update would be lost, so lorakit refuses instead.")
    return _f(m["diff"])


#: algorithm -> function building the unscaled ΔW
ALGOS = {"lora": _lora, "loha": _loha, "lokr": _lokr, "full": _full}


def delta_weight(module: dict[str, torch.Tensor], weight: torch.Tensor, name: str = "?") -> torch.Tensor:
    """ΔW (fp32, base weight's shape, scale applied) of one file module against base ``weight``."""
    algo = module_algo(name, module)
    delta = ALGOS[algo](module)
    if delta.numel() != weight.numel():
        raise ValueError(f"module {name}: the {algo} update has {tuple(delta.shape)} "
                         f"({delta.numel()} values) but the model weight is {tuple(weight.shape)}. "
                         "Is the file for another base model?")
    delta = delta.reshape(weight.shape) * scale_of(module)
    if "dora_scale" in module:
        delta = dora_delta(_f(weight), delta, _f(module["dora_scale"]))
    return delta


def dora_delta(w: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """W' − W for W' = m·(W+ΔW)/‖W+ΔW‖ (per row if m has ``out`` entries, else per column)."""
    merged = w + delta
    if magnitude.shape[0] == w.shape[0] and magnitude.numel() == w.shape[0]:
        norm = merged.reshape(w.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
        m = magnitude.reshape(norm.shape)
    else:  # legacy layout (1, in, ...): norm of each input column over the output dimension
        norm = merged.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1).reshape(1, -1, *[1] * (w.dim() - 2))
        m = magnitude.reshape(norm.shape)
    return merged * (m / (norm + EPS)) - w


def file_delta(module: dict[str, torch.Tensor], name: str = "?") -> torch.Tensor:
    """ΔW of a module without a model at hand (scale applied, fp32), in the shape the file implies.

    LoRA gives the conv shape (out, in, k, k); LoHa/LoKr may give the flattened (out, in·k·k).
    DoRA needs the base weight, so it is refused here with the reason.
    """
    if "dora_scale" in module:
        raise ValueError(f"module {name} is DoRA (dora_scale): its update depends on the base weight. "
                         "Merge it into a base checkpoint, or apply it to a model, instead.")
    algo = module_algo(name, module)
    return ALGOS[algo](module) * scale_of(module)
