"""Low-rank factorisation helpers shared by merge, resize and extract (Eckart–Young truncation)."""

from __future__ import annotations

import torch

#: dynamic rank rules (kohya resize_lora.py): name -> rank for singular values S and parameter p
RANK_RULES = {
    "sv_ratio": lambda s, p: int((s > s[0] / p).sum()),
    "sv_cumulative": lambda s, p: int(torch.searchsorted(torch.cumsum(s, 0) / s.sum(), torch.tensor(p))) + 1,
    "sv_fro": lambda s, p: int(torch.searchsorted(torch.cumsum(s * s, 0) / (s * s).sum(), torch.tensor(p * p))) + 1,
}


#: valid parameter range per dynamic rule (low, high, inclusive high) and what it means
PARAM_RANGES = {"sv_ratio": (1.0, float("inf"), "a ratio >= 1 (largest / smallest kept singular value), e.g. 4"),
                "sv_cumulative": (0.0, 1.0, "a fraction in (0, 1] of the singular-value sum, e.g. 0.9"),
                "sv_fro": (0.0, 1.0, "a fraction in (0, 1] of the Frobenius norm, e.g. 0.9")}


def check_rank_args(rank, method: str | None = None, param: float | None = None, what: str = "rank") -> None:
    """Refuse a rank or a dynamic rule's parameter before any work (one message naming the option)."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"{what}={rank!r}: expected a positive integer such as 8.")
    if method is None:
        return
    if method not in RANK_RULES:
        raise ValueError(f"dynamic method {method!r}: expected one of {sorted(RANK_RULES)}.")
    lo, hi, meaning = PARAM_RANGES[method]
    if param is None or not (lo <= param <= hi if method == "sv_ratio" else lo < param <= hi):
        raise ValueError(f"{method} parameter {param!r}: expected {meaning}.")


def choose_rank(s: torch.Tensor, rank: int | None, method: str | None = None, param: float | None = None) -> int:
    """Rank to keep: ``rank`` (fixed, or the cap of a dynamic ``method``), at least 1 and at most len(s).

    Unlike kohya's resize, a dynamic rule may keep every singular value (kohya caps at len-1).
    """
    if method is not None:
        if method not in RANK_RULES:
            raise ValueError(f"dynamic method {method!r}: expected one of {sorted(RANK_RULES)}.")
        k = 1 if float(s[0]) == 0 else RANK_RULES[method](s, param)
        rank = k if rank is None else min(k, rank)
    if rank is None:
        raise ValueError("give a rank, or a dynamic method with its parameter.")
    return max(1, min(int(rank), len(s)))


def svd_of_product(up: torch.Tensor, down: torch.Tensor):
    """SVD of up·down (out, r)·(r, n) through two thin QRs: O((out+n)·r²) instead of a full SVD."""
    q1, r1 = torch.linalg.qr(up)
    q2, r2 = torch.linalg.qr(down.t())
    u, s, vh = torch.linalg.svd(r1 @ r2.t())
    return q1 @ u, s, vh @ q2.t()


def clamp_quantile(up: torch.Tensor, down: torch.Tensor, q: float | None):
    """kohya's outlier clamp: both factors limited to the q-quantile of all their absolute values."""
    if q is None or q >= 1:
        return up, down
    values = torch.cat([up.flatten(), down.flatten()]).abs()
    k = max(1, min(values.numel(), int(round(q * (values.numel() - 1))) + 1))
    hi = values.kthvalue(k).values
    return up.clamp(-hi, hi), down.clamp(-hi, hi)


def factorize(m2d: torch.Tensor, rank: int | None, method: str | None = None, param: float | None = None,
              svd=None):
    """Best rank-k factors of a 2-D matrix: (up = U·S, down = Vh, singular values, k)."""
    u, s, vh = svd if svd is not None else torch.linalg.svd(m2d, full_matrices=False)
    k = choose_rank(s, rank, method, param)
    return u[:, :k] * s[:k], vh[:k], s, k


def retained(s: torch.Tensor, k: int) -> tuple[float, float]:
    """(Frobenius fraction ‖M_k‖/‖M‖, singular-value-sum fraction) kept by a rank-k truncation."""
    total2, total = float((s * s).sum()), float(s.sum())
    fro = (float((s[:k] * s[:k]).sum()) / total2) ** 0.5 if total2 > 0 else 1.0
    return fro, (float(s[:k].sum()) / total if total > 0 else 1.0)
