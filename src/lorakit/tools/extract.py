"""Extract a LoRA from a fine-tuned model: the truncated SVD of W_tuned − W_base per module.

For each targeted weight, D = W_tuned − W_base (fp32, conv flattened to (out, in·k·k)) gives
up = U_k·S_k, down = V_kᵀ, alpha = k, so ΔW = D_k, the best rank-k approximation
(‖D − D_k‖_F² = Σ_{j>k} σ_j², Eckart–Young). k is ``rank`` (``conv_rank`` for k×k convs) or the
smallest rank keeping the fraction ``energy`` of ‖D‖_F. ``clamp_quantile`` limits outliers in
both factors as kohya does (None keeps the exact truncation). Modules with max|D| ≤ ``min_diff``
are skipped and reported.
"""

from __future__ import annotations

import re

import torch

from ..formats.lorafile import LoraFile, Naming
from ..formats.sd_keys import canonical_te
from ._svd import check_rank_args, clamp_quantile, factorize

#: which weights get a LoRA (kohya's default targets, + resnet/sampler convs when conv_rank is set)
TARGETS = {
    "unet": r".*(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)|proj_in|proj_out)",
    "text_encoder": r".*(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])",
    "text_encoder_2": r".*(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])",
}
CONV_TARGETS = r".*((resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj))|(downsamplers|upsamplers)\.0\.conv)"


@torch.no_grad()
def extract_lora(base: dict[str, dict[str, torch.Tensor]], tuned: dict[str, dict[str, torch.Tensor]],
                 rank: int | None = 32, conv_rank: int | None = None, energy: float | None = None,
                 clamp_quantile_: float | None = 0.99, min_diff: float = 0.0, naming: Naming | None = None
                 ) -> tuple[LoraFile, list[str]]:
    """LoRA approximating ``tuned − base`` ({part: state dict} each); returns (file, skipped module names).
    FLUX.1/SD3 checkpoints (a ``transformer`` part) go to :func:`.extract_dit.extract_dit`."""
    check_extract_args(rank, conv_rank, energy, clamp_quantile_, min_diff)
    if "transformer" in tuned:
        from .extract_dit import extract_dit

        return extract_dit(base, tuned, rank, energy, clamp_quantile_, min_diff)
    modules, skipped = {}, []
    for part, tuned_sd in tuned.items():
        if part not in base:
            raise ValueError(f"the base checkpoint has no {part}; the tuned one does.")
        pattern = TARGETS.get(part, TARGETS["unet"])
        for name, w in tuned_sd.items():
            if not name.endswith(".weight") or w.dim() not in (2, 4):
                continue
            path = name[: -len(".weight")]
            is_target = re.fullmatch(pattern, path) or (conv_rank and part == "unet" and re.fullmatch(CONV_TARGETS, path))
            if not is_target:
                continue
            if name not in base[part] or base[part][name].shape != w.shape:
                raise ValueError(f"{part}.{name}: missing or differently shaped in the base checkpoint; "
                                 "are the two checkpoints the same architecture?")
            diff = w.float() - base[part][name].float()
            if float(diff.abs().max()) <= min_diff:
                skipped.append(f"{part}.{path}")
                continue
            k_cap = conv_rank if (w.dim() == 4 and w.shape[2:] != (1, 1) and conv_rank) else rank
            key = f"{part}.{path if part == 'unet' else canonical_te(path)}"
            modules[key] = lora_from_diff(diff, k_cap, energy, clamp_quantile_, w.dtype)
    meta = {"ss_network_module": "networks.lora", "ss_training_comment": "lorakit extract"}
    naming = naming or Naming(te_split="text_encoder_2" in tuned)
    return LoraFile(modules, meta, naming, source="extract"), skipped


def lora_from_diff(diff: torch.Tensor, rank: int | None, energy: float | None, clamp_q: float | None,
                   dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The best rank-k LoRA module of one weight difference (conv kernels kept; k from ``rank`` or ``energy``)."""
    method, param = ("sv_fro", energy) if energy is not None else (None, None)
    up, down, _, k = factorize(diff.flatten(1), rank, method, param)
    up, down = clamp_quantile(up, down, clamp_q)
    if diff.dim() == 4:
        up, down = up.reshape(diff.shape[0], k, 1, 1), down.reshape(k, *diff.shape[1:])
    return {"lora_down.weight": down.to(dtype).contiguous(), "lora_up.weight": up.to(dtype).contiguous(),
            "alpha": torch.tensor(float(k), dtype=dtype)}


def check_extract_args(rank, conv_rank, energy, clamp_q, min_diff) -> None:
    """Refuse bad ranks, energy, clamp quantile or min_diff before any work."""
    if rank is None and energy is None:
        raise ValueError("give a rank or an energy threshold (e.g. --energy 0.9).")
    check_rank_args(rank)
    check_rank_args(conv_rank, what="conv_rank")
    check_rank_args(None, "sv_fro" if energy is not None else None, energy)
    if clamp_q is not None and not 0 < clamp_q <= 1:
        raise ValueError(f"clamp_quantile={clamp_q!r}: expected a fraction in (0, 1] (1 turns it off).")
    if not 0 <= min_diff < float("inf"):
        raise ValueError(f"min_diff={min_diff!r}: expected a finite number >= 0.")
