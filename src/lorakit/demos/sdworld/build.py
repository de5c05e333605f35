"""Rebuild the shipped assets: the base model, the probe, and their measured accuracy.

    python -m lorakit.demos.sdworld.build --out assets      # ~33 min on 2 CPU cores

Writes ``assets/sdworld-base/`` (a StableDiffusionPipeline directory), ``assets/sdworld-probe.safetensors``
and ``assets/sdworld-stats.json`` (probe accuracy on held-out drawn scenes; probe-read accuracy of the base
model's samples on seen and held-out prompt combinations).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .evaluate import base_report
from .model import load_pipeline
from .pretrain import pretrain
from .probe import accuracy, load_probe, save_probe, train_probe


def build_probe(path: Path, steps: int = 5000, seed: int = 0) -> dict:
    probe = train_probe(steps=steps, seed=seed)
    stats = {"clean": accuracy(probe), "blurred_noisy": accuracy(probe, augment=True)}
    save_probe(probe, path, stats)
    return stats


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("assets"))
    ap.add_argument("--skip-pretrain", action="store_true", help="keep an existing sdworld-base")
    ap.add_argument("--skip-probe", action="store_true", help="keep an existing probe")
    ap.add_argument("--steps", type=int, default=2400, help="denoiser (text encoder + U-Net) steps")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base, probe_path = args.out / "sdworld-base", args.out / "sdworld-probe.safetensors"
    stats_path = args.out / "sdworld-stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    if not args.skip_pretrain:
        stats["pretrain"] = {"steps": args.steps, "vae_steps": args.vae_steps,
                             **pretrain(base, steps=args.steps, vae_steps=args.vae_steps)}
    if not args.skip_probe:
        t0 = time.time()
        stats["probe_accuracy"] = build_probe(probe_path)
        stats["probe_seconds"] = round(time.time() - t0, 1)
    stats["base_samples"] = base_report(load_pipeline(base), load_probe(probe_path))
    stats_path.write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
