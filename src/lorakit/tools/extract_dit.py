"""Extract a FLUX.1/SD3 LoRA from a fine-tuned and a base checkpoint, in the original (fused) layout.

kohya's ``flux_extract_lora.py`` works on the original checkpoints, where q, k and v are one weight, so
the module ``img_attn.qkv`` gets the best rank-k approximation of the stacked difference
[ΔW_q; ΔW_k; ΔW_v] (Eckart–Young). Diffusers checkpoints (q, k, v apart) are stacked the same way
through the tables of :mod:`lorakit.formats.dit_keys` (the final AdaLN's halves swapped back), so the
file has kohya's modules and ranks whichever layout the checkpoints use; writing it with diffusers
keys then splits it exactly. Text encoders (a pipeline directory's ``text_encoder*``) give CLIP
attention/MLP and T5 attention/FF modules, as kohya trains them.
"""

from __future__ import annotations

import re

import torch

from ..formats.dit_keys import PIPE_PARTS, TRANSFORMER, fused_entry, fused_name, split_entry, te_path
from ..formats.dit_layout import swap_index
from ..formats.lorafile import LoraFile, Naming
from .extract import lora_from_diff

TE_TARGETS = r".*(self_attn\.(q|k|v|out)_proj|mlp\.fc[12]|SelfAttention\.[qkvo]|DenseReluDense\.(wi_0|wi_1|wi|wo))"
FUSED_ROOTS = ("double_blocks.", "single_blocks.", "joint_blocks.")


def checkpoint_family(state: dict[str, torch.Tensor]) -> tuple[str, bool]:
    """(family, fused) of a transformer state dict from its names."""
    keys = list(state)
    fused = any(k.startswith(FUSED_ROOTS) for k in keys)
    if any(k.startswith(("double_blocks.", "single_blocks.", "single_transformer_blocks.", "img_in.")) for k in keys):
        return "flux1", fused
    if any(k.startswith(("joint_blocks.", "pos_embed.", "x_embedder.proj")) or ".attn2." in k for k in keys):
        return "sd3", fused
    raise ValueError("the transformer checkpoint has neither FLUX.1 (double/single blocks) nor SD3 (joint blocks, "
                     "pos_embed) weights; expected a FLUX.1 or SD3 transformer.")


def _groups(state: dict, family: str, fused: bool) -> dict[tuple, list]:
    """{(table entry, block index): weight keys in row order} for every module the tables name."""
    groups: dict[tuple, list] = {}
    for key, w in state.items():
        if not key.endswith(".weight") or w.dim() not in (2, 4):
            continue
        path = key[: -len(".weight")]
        try:
            if fused:
                entry, index, _ = fused_entry(family, path)
                groups[(entry, index)] = [key]
            else:
                entry, index, k, _ = split_entry(family, path)
                groups.setdefault((entry, index), [None] * len(entry.split))[k] = key
        except KeyError:
            continue  # norms, embeddings: no LoRA targets
    return {g: keys for g, keys in groups.items() if None not in keys}


@torch.no_grad()
def extract_dit(base: dict, tuned: dict, rank: int | None, energy: float | None, clamp_q: float | None,
                min_diff: float) -> tuple[LoraFile, list[str]]:
    """LoRA approximating ``tuned − base`` ({part: state dict}); returns (fused-layout file, skipped modules)."""
    strip = "model.diffusion_model."
    tsd = {k.removeprefix(strip): v for k, v in tuned[TRANSFORMER].items()}
    if TRANSFORMER not in base:
        raise ValueError("the base checkpoint has no transformer; the tuned one does.")
    bsd = {k.removeprefix(strip): v for k, v in base[TRANSFORMER].items()}
    family, fused = checkpoint_family(tsd)
    modules, skipped = {}, []
    for (entry, index), keys in _groups(tsd, family, fused).items():
        bad = [k for k in keys if k not in bsd or bsd[k].shape != tsd[k].shape]
        if bad:
            raise ValueError(f"transformer.{bad[0]}: missing or differently shaped in the base checkpoint; are the "
                             "two checkpoints the same architecture and layout?")
        diff = torch.cat([tsd[k].float() - bsd[k].float() for k in keys])
        name = f"{TRANSFORMER}.{fused_name(entry, index)}"
        if float(diff.abs().max()) <= min_diff:
            skipped.append(name)
            continue
        rows, inputs = diff.shape[0], diff[0].numel()
        if not fused and (entry.swap == "always" or (entry.swap == "pre_only" and rows == 2 * inputs)):
            diff = diff[swap_index(rows)]  # diffusers' (scale, shift) back to the original (shift, scale)
        modules[name] = lora_from_diff(diff, rank, energy, clamp_q, tsd[keys[0]].dtype)
    parts = {attr: part for part, attr in PIPE_PARTS[family].items() if part != TRANSFORMER}
    for attr, state in tuned.items():
        if attr not in parts:
            continue
        for key, w in state.items():
            path = key[: -len(".weight")]
            if not key.endswith(".weight") or w.dim() != 2 or not re.fullmatch(TE_TARGETS, path):
                continue
            if key not in base.get(attr, {}) or base[attr][key].shape != w.shape:
                raise ValueError(f"{attr}.{key}: missing or differently shaped in the base checkpoint.")
            diff = w.float() - base[attr][key].float()
            name = f"{parts[attr]}.{te_path(path)}"
            if float(diff.abs().max()) <= min_diff:
                skipped.append(name)
                continue
            modules[name] = lora_from_diff(diff, rank, energy, clamp_q, w.dtype)
    meta = {"ss_training_comment": "lorakit extract"}
    return LoraFile(modules, meta, Naming(dit=family, fused=True), source="extract"), skipped
