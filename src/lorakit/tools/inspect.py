"""``lorakit inspect``: what a LoRA file holds, and whether it looks trained and healthy.

Per module: algorithm, rank, alpha, scale and ‖ΔW‖_F (for LoRA from the r×r Gram matrices,
‖up·down‖_F² = tr((upᵀup)(down·downᵀ)), without forming ΔW). Warnings: all-zero ``lora_up``
(an untrained module, as kohya's check_lora_weights.py finds) and NaN/Inf tensors. For a FLUX.1/SD3
file: its transformer layout (fused original names or split diffusers ones), ranks per part, and
what converting to the other layout does to the rank (split -> fused may raise it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from ..formats.dit_layout import to_fused
from ..formats.lorafile import LoraFile, alpha_of, rank_of, scale_of
from ..formats.lycoris import ALGOS
from ..formats.sd_io import read_lora


@dataclass(frozen=True)
class ModuleInfo:
    key: str
    algo: str
    rank: int | None
    alpha: float | None
    scale: float
    norm: float
    dora: bool
    dtype: str


@dataclass
class Report:
    path: str
    source: str
    family: str | None
    naming: str
    modules: list[ModuleInfo]
    metadata: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    layout: dict = field(default_factory=dict)

    def summary(self) -> dict:
        parts = Counter(m.key.split(".", 1)[0] for m in self.modules)
        by_part: dict[str, Counter] = {}
        for m in self.modules:
            by_part.setdefault(m.key.split(".", 1)[0], Counter())[m.rank] += 1
        return {"format": self.source, "family": self.family or "unknown", "naming": self.naming,
                "modules": dict(parts), "algorithms": dict(Counter(m.algo for m in self.modules)),
                "ranks": dict(Counter(m.rank for m in self.modules)),
                "ranks_per_part": {p: dict(c) for p, c in by_part.items()},
                "alphas": dict(Counter(m.alpha for m in self.modules)),
                "dtypes": dict(Counter(m.dtype for m in self.modules)), **self.layout}


def _norm(m: dict, algo: str) -> float:
    if algo == "lora" and "lora_mid.weight" not in m:
        up, down = m["lora_up.weight"].float().flatten(1), m["lora_down.weight"].float().flatten(1)
        gram = ((up.t() @ up) * (down @ down.t())).sum().clamp(min=0)
        return float(gram.sqrt()) * abs(scale_of(m))
    return float(ALGOS[algo](m).norm()) * abs(scale_of(m))


def inspect_lora(path_or_file) -> Report:
    lf = path_or_file if isinstance(path_or_file, LoraFile) else read_lora(path_or_file)
    infos, warnings = [], []
    for key, m in lf.modules.items():
        algo = lf.algo(key)
        bad = [s for s, t in m.items() if not torch.isfinite(t.float()).all()]
        if bad:
            warnings.append(f"{key}: NaN/Inf in {bad}; this module will break any image it touches.")
        if "lora_up.weight" in m and not m["lora_up.weight"].any():
            warnings.append(f"{key}: lora_up is all zeros (untrained module: it changes nothing).")
        norm = float("nan") if bad else _norm(m, algo)
        dtype = str(next(t for s, t in m.items() if s != "alpha").dtype).removeprefix("torch.")
        infos.append(ModuleInfo(key, algo, rank_of(m), alpha_of(m), scale_of(m), norm, "dora_scale" in m, dtype))
    naming = f"unet={lf.naming.unet_style}, text encoders={'te1/te2' if lf.naming.te_split else 'te'}"
    layout = {}
    if lf.naming.dit:
        naming = ("transformer=fused (original BFL/SAI names: qkv, linear1)" if lf.naming.fused else
                  "transformer=split (diffusers names: to_q/to_k/to_v)") + ", text encoders=te1 CLIP-L/te2 CLIP-G/te3 T5"
        layout = {"fused": lf.naming.fused, "to_fused": _fuse_report(lf)}
    return Report(str(path_or_file) if not isinstance(path_or_file, LoraFile) else "<LoraFile>", lf.source,
                  lf.family(), naming, infos, dict(lf.metadata), warnings, layout)


def _fuse_report(lf: LoraFile) -> str:
    """What writing a split file in the fused layout (kohya/ComfyUI) does to its ranks."""
    if lf.naming.fused:
        return "already fused; splitting (peft) keeps every rank (up rows sliced, down copied)"
    try:
        notes = to_fused(lf)[1]
    except ValueError as exc:
        return f"cannot be fused: {exc}"
    if not notes:
        return "fusing (kohya/comfy) keeps every rank: the q/k/v parts share their lora_down"
    return f"fusing (kohya/comfy) raises the rank of {len(notes)} module(s), e.g. {notes[0].split(': ', 1)[1]}"
