"""Fused <-> split transformer layouts of a FLUX.1/SD3 LoRA (:mod:`.dit_keys`), exact both ways.

A fused module's update ΔW stacks the updates of its diffusers modules by rows
(ΔW_qkv = [ΔW_q; ΔW_k; ΔW_v]). Row selections of ΔW are expressible in the file's own factors:

* LoRA: ΔW = s·up·down, so rows of ΔW are rows of ``up``; ``down`` and ``alpha`` are copied
  (kohya's and diffusers' converters do the same). A per-row DoRA magnitude is sliced with them;
* LoHa: rows of ``hada_w1_a`` and ``hada_w2_a``; LoKr: rows of ``lokr_w1`` in blocks of
  ``lokr_w2``'s rows (only when the split falls on those blocks); full: rows of ``diff``.

Splitting is therefore exact and keeps the rank. Fusing the other way stacks the parts' rows when
they share every column factor (``down``, ``alpha``: what a split of a fused file gives back, so
fused -> split -> fused returns the same tensors); otherwise LoRA parts (or DoRA parts, all present:
the norm is per row, so their magnitudes stack) become one module with the ``down`` factors stacked and
``up`` block-diagonal, exact but of rank Σr_i (reported in ``notes``):

    up = [[s_1·up_1, 0, 0], [0, s_2·up_2, 0], [0, 0, s_3·up_3]] / s,  down = [down_1; down_2; down_3]

with s = alpha/Σr (s = s_i when all parts share one scale, so ``up`` keeps its values). A part the
file lacks contributes zero rows. The final AdaLN (and SD3's last context AdaLN) orders its rows
(shift, scale) in the original layout and (scale, shift) in diffusers: the halves are swapped.
"""

from __future__ import annotations

import torch

from .dit_keys import TRANSFORMER, Entry, fused_entry, fused_name, split_entry, split_names
from .lorafile import LoraFile, Naming, module_algo, rank_of, scale_of
from .lycoris import ALGOS, file_delta

#: tensors whose dimension ``dim`` runs over ΔW's output rows (in blocks of ``lokr_w2``'s rows for LoKr)
ROW_TENSORS = {"lora_up.weight": 0, "hada_w1_a": 0, "hada_w2_a": 0, "diff": 0, "diff_b": 0, "dora_scale": 0,
               "lokr_w1": 0, "lokr_w1_a": 0}


def delta_shape(m: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Shape of the module's ΔW (shapes only, on the meta device)."""
    if "lora_up.weight" in m and "lora_down.weight" in m and "lora_mid.weight" not in m:  # the common case, direct
        return (m["lora_up.weight"].shape[0], *m["lora_down.weight"].shape[1:])
    meta = {s: torch.empty(t.shape, device="meta") for s, t in m.items()}
    return tuple(ALGOS[module_algo("?", m)](meta).shape)


def _row_dims(m: dict[str, torch.Tensor], rows: int, name: str) -> tuple[dict[str, int], int]:
    """{tensor: dim indexing output rows}, and the block size one index of those dims covers."""
    dims = {s: d for s, d in ROW_TENSORS.items() if s in m}
    if "hada_t1" in m:  # LoHa Tucker: w_a is (r, out)
        dims.update(hada_w1_a=1, hada_w2_a=1)
    if "dora_scale" in m and m["dora_scale"].numel() != rows:
        raise ValueError(f"{name}: its dora_scale has one value per input column (the old LyCORIS layout), so "
                         "its update does not split by output rows; re-export it with wd_on_output (one per row).")
    block = 1
    if "lokr_w1" in m or "lokr_w1_a" in m:
        w2 = m.get("lokr_w2", m.get("lokr_w2_a"))
        block = w2.shape[1] if "lokr_t2" in m else w2.shape[0]
    return dims, block


def select_rows(m: dict[str, torch.Tensor], rows: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    """The module whose ΔW is ``ΔW[rows]`` (indices into ΔW's output rows); ValueError when its
    factors cannot express that selection (LoKr rows not on ``lokr_w2`` blocks, old DoRA layout)."""
    total = delta_shape(m)[0]
    dims, block = _row_dims(m, total, name)
    if block > 1:
        blocks = rows.reshape(-1, block) if rows.numel() % block == 0 else None
        if blocks is None or not torch.equal(blocks, blocks[:, :1] + torch.arange(block)) or bool((blocks[:, 0] % block).any()):
            raise ValueError(f"{name}: its LoKr factors cover rows in blocks of {block}, and the rows asked for do "
                             "not fall on those blocks, so no LoKr module expresses them.")
        rows = blocks[:, 0] // block
    return {s: (_take(t, dims[s], rows) if s in dims else t) for s, t in m.items()}


def _take(t: torch.Tensor, dim: int, rows: torch.Tensor) -> torch.Tensor:
    """``t.index_select(dim, rows)``; runs of consecutive rows are views (``narrow``), not gathers: a split
    copies nothing, and CPU gathers of bf16 tensors are slow."""
    if rows.numel() == 0:
        return t.index_select(dim, rows)
    breaks = (torch.nonzero(rows[1:] - rows[:-1] != 1).flatten() + 1).tolist()
    runs = [(int(rows[a]), b - a) for a, b in zip([0, *breaks], [*breaks, rows.numel()], strict=True)]
    pieces = [t.narrow(dim, start, n) for start, n in runs]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim)


def swap_index(rows: int) -> torch.Tensor:
    """(shift, scale) <-> (scale, shift): the two halves of the rows exchanged."""
    half = rows // 2
    return torch.cat([torch.arange(half, rows), torch.arange(half)])


def needs_swap(entry: Entry, m: dict[str, torch.Tensor]) -> bool:
    if entry.swap == "always":
        return True
    if entry.swap == "pre_only":  # SD3's last context block has a 2-chunk AdaLN (shift, scale)
        out, *rest = delta_shape(m)
        return out == 2 * rest[0]
    return False


def part_sizes(entry: Entry, rows: int, name: str) -> list[int]:
    total = sum(entry.ratios)
    if rows % total:
        raise ValueError(f"{name}: {rows} output rows do not split in the ratios {entry.ratios} of "
                         f"{', '.join(entry.split)}; is the file for this model family?")
    return [rows // total * r for r in entry.ratios]


def split_module(entry: Entry, index, m: dict, name: str, dense: bool = False) -> dict[str, dict]:
    """{diffusers path: module} for one fused module. ``dense``: a selection the factors cannot express
    becomes a full ``diff`` module (exact; how such modules are applied to a model)."""
    rows = delta_shape(m)[0]
    order = swap_index(rows) if needs_swap(entry, m) else torch.arange(rows)
    out, start = {}, 0
    for path, size in zip(split_names(entry, index), part_sizes(entry, rows, name), strict=True):
        sel = order[start:start + size]
        start += size
        try:
            out[path] = select_rows(m, sel, name)
        except ValueError:
            if not dense or "dora_scale" in m:
                raise
            out[path] = {"diff": file_delta(m, name).reshape(rows, -1)[sel].reshape(size, *delta_shape(m)[1:])}
    return out


def _plain(m: dict) -> bool:
    """LoRA factors (with a DoRA magnitude of one value per output row, or none), no Tucker core."""
    rows = delta_shape(m)[0]
    return module_algo("?", m) == "lora" and "lora_mid.weight" not in m and m.get("dora_scale", torch.empty(rows)).numel() == rows


def _shared(parts: list[dict]) -> bool:
    """All parts present, same algorithm and identical column factors (only row tensors differ)."""
    if any(p is None for p in parts) or len({frozenset(p) for p in parts}) != 1:
        return False
    first, rows = parts[0], delta_shape(parts[0])[0]
    dims = _row_dims(first, rows, "?")[0]
    return all(torch.equal(p[s], first[s]) for p in parts[1:] for s in first if s not in dims)


def fuse_modules(entry: Entry, index, parts: list[dict | None], name: str) -> tuple[dict, str]:
    """One fused module from its diffusers parts (None: the file has no module there); a note when the rank rose."""
    present = [p for p in parts if p is not None]
    units = {delta_shape(p)[0] // r for p, r in zip(parts, entry.ratios, strict=True) if p is not None}
    if len(units) != 1:
        raise ValueError(f"{name}: its parts have row counts that do not fit the ratios {entry.ratios}.")
    unit = units.pop()
    sizes = [unit * r for r in entry.ratios]
    if _shared(parts):
        dims = _row_dims(parts[0], sizes[0], name)[0]
        return {s: torch.cat([p[s] for p in parts], dims[s]) if s in dims else t for s, t in parts[0].items()}, ""
    dora = {"dora_scale" in p for p in present}
    if not all(_plain(p) for p in present) or dora == {True, False} or (True in dora and None in parts):
        raise ValueError(f"{name}: its parts {', '.join(split_names(entry, index))} do not share their column "
                         "factors and are not all LoRA, or not all DoRA with every part present (the rows of a "
                         "missing part would need the base weight's norm); only those fuse into one module "
                         "(block-diagonal up). Keep the diffusers layout (--to peft) for this file.")
    ranks = [rank_of(p) for p in present]
    scales = {scale_of(p) for p in present}
    dtype, total = present[0]["lora_up.weight"].dtype, sum(ranks)
    scale = scales.pop() if len(scales) == 1 else 1.0
    up = torch.zeros(sum(sizes), total, dtype=dtype)
    downs, row, col = [], 0, 0
    for p, size in zip(parts, sizes, strict=True):
        if p is not None:
            r = rank_of(p)
            up[row:row + size, col:col + r] = (p["lora_up.weight"].float() * (scale_of(p) / scale)).to(dtype)
            downs.append(p["lora_down.weight"])
            col += r
        row += size
    alpha = torch.tensor(scale * total, dtype=present[0]["alpha"].dtype if "alpha" in present[0] else torch.float32)
    note = f"{name}: rank {'+'.join(map(str, ranks))} -> {total} (parts with different lora_down: stacked downs, block-diagonal up)"
    fused = {"lora_down.weight": torch.cat(downs, 0), "lora_up.weight": up, "alpha": alpha}
    if True in dora:  # DoRA's norm is per output row, so the parts' magnitudes stack with their rows
        fused["dora_scale"] = torch.cat([p["dora_scale"].reshape(-1, 1) for p in present])
    return fused, note


def to_split(lf: LoraFile, dense: bool = False) -> LoraFile:
    """``lf`` with its transformer modules in diffusers' layout (returns ``lf`` itself if already split)."""
    if not lf.naming.fused:
        return lf
    family, modules = _family(lf), {}
    for key, m in lf.modules.items():
        part, path = key.split(".", 1)
        if part != TRANSFORMER:
            modules[key] = m
            continue
        entry, index, _ = fused_entry(family, path)
        for new, tensors in split_module(entry, index, m, f"{lf.path or 'LoRA'}: {key}", dense).items():
            modules[f"{TRANSFORMER}.{new}"] = tensors
    return _with(lf, modules, fused=False)


def to_fused(lf: LoraFile, family: str | None = None) -> tuple[LoraFile, list[str]]:
    """``lf`` with its transformer modules in the original layout, and notes on modules whose rank rose."""
    if lf.naming.fused:
        return lf, []
    family = family or _family(lf)
    groups: dict[tuple, list] = {}
    modules, notes = {}, []
    for key, m in lf.modules.items():
        part, path = key.split(".", 1)
        if part != TRANSFORMER:
            modules[key] = m
            continue
        entry, index, k, _ = split_entry(family, path)
        groups.setdefault((entry, index), [None] * len(entry.split))[k] = m
    for (entry, index), parts in groups.items():
        name = f"{lf.path or 'LoRA'}: {TRANSFORMER}.{fused_name(entry, index)}"
        if len(parts) == 1:
            m = parts[0]
            fused = select_rows(m, swap_index(delta_shape(m)[0]), name) if needs_swap(entry, m) else m
        else:
            fused, note = fuse_modules(entry, index, parts, name)
            notes += [note] if note else []
        modules[f"{TRANSFORMER}.{fused_name(entry, index)}"] = fused
    out = _with(lf, modules, fused=True)
    out.naming.dit = family
    return out, notes


def _family(lf: LoraFile) -> str:
    family = lf.family()
    if family not in ("flux1", "sd3"):
        raise ValueError(f"{lf.path or 'this LoRA'}: its transformer modules exist in both FLUX.1 and SD3, so "
                         "its family cannot be told from the file; pass family='flux1' or 'sd3' (--family).")
    return family


def _with(lf: LoraFile, modules: dict, fused: bool) -> LoraFile:
    naming = Naming(**{**vars(lf.naming), "fused": fused})
    return LoraFile(modules, dict(lf.metadata), naming, source=lf.source, path=lf.path)


__all__ = ["delta_shape", "fuse_modules", "select_rows", "split_module", "swap_index", "to_fused",
           "to_split"]
