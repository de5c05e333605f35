"""lorakit's CPU trainer setting ``train.keep_heap`` (lorakit/train/heap.py) against glibc's defaults.

The core benchmark's model and LoRA step (train_step.py), one fresh process per measurement, the two
settings alternating round by round (a heap policy is process-wide, so they cannot share a process):
median step time and minor page faults per step, and the per-round ratio kept / default.

    .venv/bin/python benchmarks/cpu_heap.py [--rounds 5 --steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from _common import env_without_heap_policy, header, setup


def child(mode: str, steps: int) -> dict:
    import torch
    from train_step import build_model, make_step

    import lorakit
    from lorakit.train.heap import keep_heap

    if mode == "kept" and not keep_heap():
        raise SystemExit("keep_heap() did not apply: this C library is not glibc")
    model = lorakit.inject(build_model(), lorakit.LoraConfig(r=16, alpha=32, target_modules="all-linear"))
    batch = torch.randint(0, 8000, (4, 256), generator=torch.Generator().manual_seed(0))
    step = make_step(model, lambda: model(input_ids=batch, labels=batch).loss)
    for _ in range(2):  # warm-up: optimizer state, and the heap grows to its working size
        step()
    times, faults = [], []
    for _ in range(steps):
        f, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
    return {"ms": 1e3 * statistics.median(times), "faults": statistics.median(faults)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--child", choices=["default", "kept"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    setup(2)
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    per = {"default": [], "kept": []}
    for r in range(args.rounds):
        for mode in (("default", "kept") if r % 2 == 0 else ("kept", "default")):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(args.steps)], check=True,
                                 capture_output=True, text=True, env=env_without_heap_policy(),
                                 cwd=os.path.dirname(os.path.abspath(__file__)))
            per[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(header(args.rounds, args.steps, 16, ", one process per measurement, settings alternating"))
    for mode, rows in per.items():
        print(f"{mode:8s} step {statistics.median(x['ms'] for x in rows):7.1f} ms   page faults per step "
              f"{statistics.median(x['faults'] for x in rows):8.0f}   rounds {[round(x['ms']) for x in rows]}")
    ratios = sorted(k["ms"] / d["ms"] for k, d in zip(per["kept"], per["default"], strict=True))
    print(f"kept / default = {statistics.median(ratios):.3f} (per-round, range {ratios[0]:.3f}–{ratios[-1]:.3f})")


if __name__ == "__main__":
    main()
