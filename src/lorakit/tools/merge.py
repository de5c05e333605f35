"""Merge LoRA files into one LoRA, or into a base checkpoint.

With ΔW_i the update of file i (scale included) and w_i its weight, per module:

* ``cat``    exact: up = [w_1·s_1·up_1 | w_2·s_2·up_2 ...], down = [down_1; down_2 ...], alpha = Σr_i,
             so ΔW = Σ w_i·ΔW_i (plain LoRA modules only).
* ``linear`` exact: M = Σ w_i·ΔW_i, re-factorised by SVD at its numerical rank (≤ Σr_i).
* ``svd``    M truncated to ``rank`` by SVD (the best rank-k approximation, Eckart–Young).
* ``ties``   (Yadav et al. 2023) τ_i = w_i·ΔW_i trimmed to the top ``density`` fraction by |τ|; the
             sign of Σ trimmed τ_i is elected per entry; M = mean of the entries agreeing with it.
* ``dare``   (Yu et al. 2024) τ_i entries dropped with probability 1−density, the rest scaled by 1/density;
             M = Σ w_i·τ̃_i.

kohya's merge_lora.py sums up and down factors separately, which squares a single file's ratio and
adds cross terms up_i·down_j; none of the methods here does that. Merging into a checkpoint adds
W += strength_i·block_weight(module)·ΔW_i (DoRA modules use the base weight, as when applied).
FLUX.1/SD3 files are first brought to one transformer layout (fused if all are, else diffusers'
split one, exactly) and, for a checkpoint, to its layout and part names.
"""

from __future__ import annotations

import math

import torch

from ..formats.dit_keys import PIPE_PARTS
from ..formats.dit_layout import to_fused, to_split
from ..formats.lorafile import LoraFile, Naming, rank_of, scale_of
from ..formats.lycoris import delta_weight, file_delta
from ..formats.sd_keys import te_alternatives
from ..formats.validate import require_finite
from ._svd import check_rank_args, factorize, svd_of_product

METHODS = ("cat", "linear", "svd", "ties", "dare")


def _weights(files, weights):
    weights = [1.0] * len(files) if weights is None else [float(w) for w in weights]
    if len(weights) != len(files):
        raise ValueError(f"got {len(weights)} weights for {len(files)} LoRAs; give one weight per LoRA.")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights {weights}: expected finite numbers such as 1,0.5.")
    return weights


def _check_families(files: list[LoraFile]) -> None:
    fams = [f.family() for f in files]
    if len(set(fams) - {None}) > 1:
        which = ", ".join(f"{f.path or f'LoRA {i + 1}'} is {fam.upper() if fam else 'of unknown family'}"
                          for i, (f, fam) in enumerate(zip(files, fams, strict=True)))
        raise ValueError(f"the LoRAs are for different model families ({which}); only LoRAs of one family can be "
                         "merged.")


def merge_loras(files: list[LoraFile], weights: list[float] | None = None, method: str = "cat",
                rank: int | None = None, density: float = 0.5, seed: int = 0) -> LoraFile:
    """Combine ``files`` into one ``LoraFile`` (see the module docstring for each ``method``)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}.")
    if method == "svd" and rank is None:
        raise ValueError("method='svd' needs a target rank (--rank).")
    check_rank_args(rank)
    if method in ("ties", "dare") and not 0 < density <= 1:
        raise ValueError(f"density={density}: expected a fraction in (0, 1].")
    weights = _weights(files, weights)
    _check_families(files)
    files = same_layout(files)
    for f in files if method != "cat" else ():  # cat only stacks factors; the others multiply and factorize
        require_finite(f, f"merge-loras --method {method}")
    gen = torch.Generator().manual_seed(seed)
    keys = list(dict.fromkeys(k for f in files for k in f.modules))
    out = {}
    for key in keys:
        present = [(f.modules[key], w) for f, w in zip(files, weights, strict=True) if key in f.modules]
        _check_shapes(key, present)
        out[key] = _cat(key, present) if method == "cat" else _dense_merge(key, present, method, rank, density, gen)
    first = files[0]
    meta = {k: v for k, v in first.metadata.items() if k.startswith(("ss_base_model_version", "ss_v2", "modelspec."))}
    meta["ss_training_comment"] = f"lorakit merge-loras method={method} weights={weights}"
    return LoraFile(out, meta, Naming(**vars(first.naming)), source="merge")


def same_layout(files: list[LoraFile]) -> list[LoraFile]:
    """FLUX.1/SD3 files with their transformer modules under the same names: fused if every file is, else split."""
    if not any(f.naming.dit for f in files) or all(f.naming.fused for f in files):
        return files
    return [to_split(f) for f in files]


def _cat(key: str, present) -> dict[str, torch.Tensor]:
    ups, downs = [], []
    for m, w in present:
        if set(m) - {"lora_down.weight", "lora_up.weight", "alpha"}:
            raise ValueError(f"module {key} is not plain LoRA ({sorted(m)}); 'cat' stacks LoRA factors only. "
                             "Use method 'linear' (exact) or 'svd' for LoHa/LoKr/Tucker modules.")
        up, down = m["lora_up.weight"].float(), m["lora_down.weight"].float()
        if downs and down.dim() != downs[0].dim():  # a 1x1-conv file beside a Linear one: use the first's layout
            up = up.reshape(up.shape[0], up.shape[1], *ups[0].shape[2:])
            down = down.reshape(down.shape[0], *downs[0].shape[1:])
        ups.append(up * (w * scale_of(m)))
        downs.append(down)
    down = torch.cat(downs, 0)
    return {"lora_down.weight": down, "lora_up.weight": torch.cat(ups, 1),
            "alpha": torch.tensor(float(down.shape[0]))}


def _check_shapes(key: str, present) -> None:
    sizes = []
    for m, _ in present:
        if "lora_down.weight" in m:
            sizes.append((m["lora_up.weight"].shape[0], m["lora_down.weight"][0].numel()))
        elif "dora_scale" not in m:
            sizes.append(tuple(file_delta(m, key).flatten(1).shape))
    if len(set(sizes)) > 1:
        raise ValueError(f"module {key} has (out, in) sizes {sizes} in the different LoRAs; they were made for "
                         "different base models and cannot be merged.")


def _shape(key: str, present) -> tuple[int, ...]:
    for m, _ in present:
        if "lora_down.weight" in m:
            return (m["lora_up.weight"].shape[0], *m["lora_down.weight"].shape[1:])
    return tuple(file_delta(present[0][0], key).shape)


def _plain(m) -> bool:
    return not set(m) - {"lora_down.weight", "lora_up.weight", "alpha"}


def _dense_merge(key, present, method, rank, density, gen) -> dict[str, torch.Tensor]:
    shape = _shape(key, present)
    if method in ("linear", "svd") and all(_plain(m) for m, _ in present):
        # Σ w_i·ΔW_i = [w_i·s_i·up_i]·[down_i]: its SVD comes from two thin QRs, never the dense matrix
        cat = _cat(key, present)
        u, s, vh = svd_of_product(cat["lora_up.weight"].flatten(1), cat["lora_down.weight"].flatten(1))
        if rank is None:
            rank = max(1, int((s > s[0] * 1e-6).sum())) if float(s[0]) > 0 else 1
        up, down, _, k = factorize(None, rank, svd=(u, s, vh))
        return _pack(up, down, k, shape)
    taus = [w * file_delta(m, key).reshape(shape[0], -1) for m, w in present]
    if method in ("linear", "svd"):
        total = sum(taus)
    elif method == "ties":
        total = ties(taus, density)
    else:
        total = dare(taus, density, gen)
    cap = sum(rank_of(m) or min(total.shape) for m, _ in present)
    if rank is None:  # exact: keep every singular value above the float noise floor
        s = torch.linalg.svdvals(total)
        rank = max(1, int((s > s[0] * 1e-6).sum())) if float(s[0]) > 0 else 1
        rank = min(rank, cap) if method == "linear" else rank
    up, down, _, k = factorize(total, rank)
    return _pack(up, down, k, shape)


def _pack(up, down, k, shape) -> dict[str, torch.Tensor]:
    conv = len(shape) == 4
    return {"lora_down.weight": down.reshape(k, *shape[1:]) if conv else down,
            "lora_up.weight": up.reshape(shape[0], k, 1, 1) if conv else up,
            "alpha": torch.tensor(float(k))}


def ties(taus: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES-merging: trim each τ to its top-``density`` magnitudes, elect signs, average agreeing entries."""
    trimmed = []
    for t in taus:
        k = max(1, int(round(density * t.numel())))
        thresh = t.abs().flatten().kthvalue(t.numel() - k + 1).values
        trimmed.append(torch.where(t.abs() >= thresh, t, torch.zeros_like(t)))
    stack = torch.stack(trimmed)
    sign = torch.sign(stack.sum(0))
    agree = (torch.sign(stack) == sign) & (stack != 0)
    return (stack * agree).sum(0) / agree.sum(0).clamp(min=1)


def dare(taus: list[torch.Tensor], density: float, gen: torch.Generator) -> torch.Tensor:
    """DARE: drop each entry with probability 1−density, rescale survivors by 1/density, then sum."""
    total = torch.zeros_like(taus[0])
    for t in taus:
        keep = torch.rand(t.shape, generator=gen) < density
        total += t * keep / density
    return total


@torch.no_grad()
def merge_into_base(state: dict[str, dict[str, torch.Tensor]], files: list[LoraFile],
                    strengths: list[float] | None = None, block_weights: dict[str, float] | None = None
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """New checkpoint tensors {part: state dict} with W + Σ strength_i·block_weight·ΔW_i; inputs untouched.

    ``block_weights`` maps module-path prefixes (``unet.down_blocks.1``, ``text_encoder``) to
    multipliers; the longest matching prefix wins, unmatched modules use 1.
    """
    strengths = _weights(files, strengths)
    _check_families(files)
    files = [for_checkpoint(f, state) for f in files]
    for f in files:  # NaN/Inf would spread into every weight the module touches
        require_finite(f, "merging into a checkpoint")
    problems = [f"{key}: no weight {key.split('.', 1)[1]}.weight in the checkpoint's {key.split('.', 1)[0]}"
                for f in files for key in f.modules if _weight_key(state, key) is None]
    if problems:
        raise ValueError(f"{len(problems)} LoRA module(s) do not fit the checkpoint; nothing was written:\n  - "
                         + "\n  - ".join(problems[:40]))
    out = {part: dict(sd) for part, sd in state.items()}
    for f, s in zip(files, strengths, strict=True):
        for key, m in f.modules.items():
            part, wkey = key.split(".", 1)[0], _weight_key(state, key)
            w = out[part][wkey]
            factor = s * block_weight(key, block_weights or {})
            if factor == 0:
                continue
            delta = delta_weight(m, w, key)
            out[part][wkey] = (w.float() + factor * delta).to(w.dtype)
    return out


def for_checkpoint(lf: LoraFile, state: dict[str, dict]) -> LoraFile:
    """A FLUX.1/SD3 file in the checkpoint's transformer layout (original fused names or diffusers' split
    ones) and under its part names (``text_encoder``...); SD files as they are."""
    if not lf.naming.dit:
        return lf
    from .extract_dit import checkpoint_family

    tsd = state.get("transformer", {})
    family, fused = checkpoint_family(tsd) if tsd else (lf.family(), False)
    if lf.family() not in (None, family):
        raise ValueError(f"{lf.path or 'a LoRA'} is for {lf.family()} but the checkpoint is {family}.")
    lf = to_fused(lf, family)[0] if fused else to_split(LoraFile(lf.modules, lf.metadata, Naming(
        **{**vars(lf.naming), "dit": family}), lf.source, lf.path))
    table = PIPE_PARTS[family]
    modules = {f"{table[k.split('.', 1)[0]]}.{k.split('.', 1)[1]}": m for k, m in lf.modules.items()}
    return LoraFile(modules, lf.metadata, lf.naming, lf.source, lf.path)


def _weight_key(state, key: str) -> str | None:
    part, path = key.split(".", 1)
    for cand in [path] if part in ("unet", "transformer") else te_alternatives(path):
        if f"{cand}.weight" in state.get(part, {}):
            return f"{cand}.weight"
    return None


def block_weight(key: str, table: dict[str, float]) -> float:
    best, value = -1, 1.0
    for prefix, v in table.items():
        if (key == prefix or key.startswith(prefix + ".")) and len(prefix) > best:
            best, value = len(prefix), float(v)
    return value


__all__ = ["METHODS", "block_weight", "dare", "for_checkpoint", "merge_into_base", "merge_loras", "same_layout", "ties"]
