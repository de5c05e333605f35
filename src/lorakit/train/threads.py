"""CPU threads per process under ``torchrun``: each process gets its share of the cores.

Two torch processes that each use every core slow each other far more than 2x (measured: a 7 s
quickstart LoRA run took 280 s beside another torch job), and torchrun's own default, one thread per
process, leaves most cores idle. So on CPU each process uses ``cores // LOCAL_WORLD_SIZE`` threads,
unless the user chose: ``LORAKIT_NUM_THREADS=N`` always wins, and an ``OMP_NUM_THREADS`` other than
torchrun's default ``1`` is respected.
"""

from __future__ import annotations

import os

ENV = "LORAKIT_NUM_THREADS"


def thread_share(env: dict, cores: int) -> int | None:
    """Threads this process should use, or None to leave torch's setting alone."""
    if env.get(ENV):
        return max(1, int(env[ENV]))
    local = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local <= 1 or env.get("OMP_NUM_THREADS", "1") != "1":
        return None  # a single process, or the user chose OMP_NUM_THREADS
    return max(1, cores // local)


def share_cpu_threads(device_kind: str) -> int | None:
    """Apply :func:`thread_share` to torch on CPU runs; returns the thread count set (None: unchanged)."""
    import torch

    if device_kind != "cpu":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = thread_share(dict(os.environ), cores)
    if n is not None:
        torch.set_num_threads(n)
    return n
