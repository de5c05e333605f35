"""Change the rank of a LoRA by SVD, keeping its effective strength (kohya resize_lora.py, without its quirks).

Per module, M = up·down (unscaled; LoHa/LoKr: their dense ΔW) is truncated to rank k by SVD, the
best rank-k approximation (Eckart–Young): ‖M − M_k‖_F² = Σ_{j>k} σ_j². The new factors are
up = U_k·S_k, down = V_kᵀ and the new alpha is (alpha/r)·k, so ΔW' = (alpha/r)·M_k.
k is fixed (``rank``) or chosen per module by ``sv_ratio``, ``sv_cumulative`` or ``sv_fro``
(``rank`` then caps it). Each module reports the Frobenius and singular-value-sum fractions kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats.lorafile import LoraFile, Naming, rank_of, scale_of
from ..formats.lycoris import file_delta
from ..formats.validate import require_finite
from ._svd import check_rank_args, choose_rank, retained, svd_of_product


@dataclass(frozen=True)
class ResizeReport:
    module: str
    old_rank: int | None
    new_rank: int
    fro_retained: float
    sum_retained: float


def resize_lora(lf: LoraFile, rank: int | None = None, method: str | None = None, param: float | None = None
                ) -> tuple[LoraFile, list[ResizeReport]]:
    """A new ``LoraFile`` at the chosen rank(s), and a report per module."""
    if method is not None and param is None:
        raise ValueError(f"method={method!r} needs its parameter (--param), e.g. 0.9 for sv_fro.")
    check_rank_args(rank, method, param)
    require_finite(lf, "resize (an SVD)")
    out, reports = {}, []
    for key, m in lf.modules.items():
        plain = not set(m) - {"lora_down.weight", "lora_up.weight", "alpha"}
        if plain:
            up, down = m["lora_up.weight"].float(), m["lora_down.weight"].float()
            shape = (up.shape[0], *down.shape[1:])
            u, s, vh = svd_of_product(up.flatten(1), down.flatten(1))
            scale, dtype = scale_of(m), down.dtype
        else:
            delta = file_delta(m, key)
            shape = tuple(delta.shape)
            u, s, vh = torch.linalg.svd(delta.flatten(1), full_matrices=False)
            scale, dtype = 1.0, next(iter(m.values())).dtype
        k = choose_rank(s, rank, method, param)
        conv = len(shape) == 4
        new_up, new_down = u[:, :k] * s[:k], vh[:k]
        out[key] = {"lora_down.weight": (new_down.reshape(k, *shape[1:]) if conv else new_down).to(dtype),
                    "lora_up.weight": (new_up.reshape(shape[0], k, 1, 1) if conv else new_up).to(dtype),
                    "alpha": torch.tensor(scale * k, dtype=dtype)}
        reports.append(ResizeReport(key, rank_of(m), k, *retained(s, k)))
    meta = dict(lf.metadata)
    for stale in ("ss_network_dim", "ss_network_alpha", "sshs_model_hash", "sshs_legacy_hash"):
        meta.pop(stale, None)  # recomputed on write
    how = f"rank={rank}" if method is None else f"{method}={param} (cap {rank})"
    meta["ss_training_comment"] = f"lorakit resize {how}; " + lf.metadata.get("ss_training_comment", "")
    return LoraFile(out, meta, Naming(**vars(lf.naming)), source=lf.source), reports
