"""Keep freed memory in the process heap while training on CPU (glibc only).

glibc hands large freed blocks back to the OS (blocks over its mmap threshold, and a heap top over
its trim threshold), so the next step's activations, logits and gradients of the same sizes are
page-faulted in again: on the core benchmark model (benchmarks/cpu_heap.py) a LoRA step takes a
median of 12.7–17 k minor faults (up to 65 k; ~4 µs each in a VM) with glibc's defaults and none once
the heap is kept. A training step allocates the same sizes every step, so the kept blocks are
reused rather than piling up; the process's RSS stays at its peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
_TRIM_NEVER = 2**31 - 1  # mallopt takes an int: trim only when 2 GiB lie free at the heap top


def keep_heap() -> bool:
    """Tell glibc's malloc to stop returning memory to the OS: no mmap for big blocks, no trimming.

    Process-wide and lasting; returns False (changing nothing) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it; musl's mallopt is a no-op stub)
    except (OSError, AttributeError):
        return False
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, _TRIM_NEVER) == 1
