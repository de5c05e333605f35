"""``make demo-sd``: train a LoRA on the sdworld base with the real ``lorakit`` CLI, then measure it.

    python -m lorakit.demos.sdworld.demo --out runs/sdworld-demo

Exactly what a user does: write a kohya folder (``10_sks ring/``, 16 captioned images at five aspect
ratios), a regularization folder (``1_shape/``, 32 images of the base world's shapes: DreamBooth's prior
preservation) and a prompt file, write ``sd.yaml``, run ``lorakit validate sd.yaml`` and ``lorakit train
sd.yaml`` (samples and a kohya ``.safetensors`` every 4 epochs), draw a strength x epoch grid with
``lorakit sd grid``, then read samples with the probe: the share showing a ring per strength with the
trigger word, and how often prompts without it are read exactly as the base model's samples.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .concept import write_concept, write_regularization
from .evaluate import CFG, STRENGTHS, format_table, strength_table
from .world import CONCEPT, SIZES, TRIGGER

ROOT = Path(__file__).resolve().parents[4]  # the repository (src/lorakit/demos/sdworld/demo.py)
NOUN = f"{TRIGGER} {CONCEPT}"  # the trigger word and the concept's class word, as kohya's folder names them
PROMPTS = (f"a red {NOUN} on a blue background --w 32 --h 32 --d 1",
           f"a yellow {NOUN} on a black background --w 40 --h 24 --d 2",
           f"a white {NOUN} on a green background --w 24 --h 40 --d 3",
           "a green circle on a white background --w 32 --h 32 --d 4",
           "a blue square on a yellow background --w 32 --h 32 --d 5")
NAME = f"{TRIGGER}_{CONCEPT}"
MARKER = ".sdworld-demo"


SAVE_EVERY = 4  # epochs between saved files and samples
# LoCon: kohya's transformer targets plus the ResNet 3x3 convs, where a new shape is drawn (rank 8 on the
# transformers alone drew the old concept, a star, less often; see docs/sdworld.md)
NETWORK = {"module": "lora", "dim": 16, "alpha": 16, "conv_dim": 16, "conv_alpha": 16}
LR = 5e-4


def config(out: Path, base: Path, epochs: int) -> dict:
    """The sd.yaml of the demo: kohya's folders (concept + regularization), LoRA on kohya's U-Net targets."""
    return {
        "task": "diffusion",
        "model": {"path": str(base), "family": "auto", "prediction_type": "auto", "dtype": "float32", "device": "cpu"},
        "data": {"train_data_dir": str(out / "data"), "reg_data_dir": str(out / "reg"), "resolution": 32, "enable_bucket": True, "min_bucket_reso": 16,
                 "max_bucket_reso": 64, "bucket_reso_steps": 8, "bucket_no_upscale": False, "caption_extension": ".txt",
                 "cache_latents": True, "cache_text_encoder_outputs": True},
        "network": {**NETWORK, "train_unet_only": True},
        "train": {"output_dir": str(out / "run"), "output_name": NAME, "epochs": epochs, "batch_size": 4,
                  "lr": LR, "optimizer": "adamw", "scheduler": "constant", "seed": 42,
                  "save_every_n_epochs": SAVE_EVERY, "save_precision": "fp16"},
        "sample": {"prompts": str(out / "prompts.txt"), "every_n_epochs": SAVE_EVERY, "before_training": True,
                   "sampler": "euler_a"},
    }


def lorakit(*args: str, log) -> float:
    """Run ``python -m lorakit ARGS`` like a user would, its output (the trainer's progress lines) passed to
    ``log`` line by line as it comes; raise on failure; seconds taken."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONUNBUFFERED": "1"}
    log("$ lorakit " + " ".join(args))
    t0 = time.time()
    with subprocess.Popen([sys.executable, "-m", "lorakit", *args], env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as proc:
        for line in proc.stdout:
            log(line.rstrip("\n"))
    if proc.returncode:
        raise SystemExit(f"`lorakit {' '.join(args)}` failed with exit code {proc.returncode} (output above).")
    return time.time() - t0


def trained_sizes(cfg: dict) -> tuple[tuple, tuple]:
    """The world's image sizes split into (sizes in the config's bucket list, sizes no bucket has).

    At 32 px kohya's bucket list (area <= 32x32, step 8) holds 1:1, 5:3 and 3:5; a 4:3 image trains in the
    nearest of those, and its own size (a 4x3 latent) is never seen in training.
    """
    from lorakit.tasks.diffusion.dataset.buckets import make_bucket_resolutions

    d = cfg["data"]
    buckets = set(make_bucket_resolutions((d["resolution"],) * 2, d["min_bucket_reso"], d["max_bucket_reso"],
                                          d["bucket_reso_steps"]))
    return tuple(s for s in SIZES if s in buckets), tuple(s for s in SIZES if s not in buckets)


def probe_rows(base: Path, lora: Path, probe_path: Path, n: int, strengths=STRENGTHS, sizes=SIZES) -> list[dict]:
    """The probe's strength table for one saved kohya file, loaded as a user would (``lorakit.sd.load_lora``)."""
    from lorakit import set_active_adapters
    from lorakit.sd import load_lora

    from .model import load_pipeline
    from .probe import load_probe

    pipe = load_pipeline(base)
    load_lora(pipe, [lora], names=["sks"])

    def strength(s: float) -> None:
        for part in (pipe.unet, pipe.text_encoder):
            if any(True for _ in part.modules() if hasattr(_, "adapters") and "sks" in _.adapters):
                set_active_adapters(part, {"sks": s})

    return strength_table(pipe, load_probe(probe_path), strength, n=n, strengths=strengths, sizes=sizes)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/sdworld-demo"))
    ap.add_argument("--base", type=Path, default=ROOT / "assets" / "sdworld-base")
    ap.add_argument("--probe", type=Path, default=ROOT / "assets" / "sdworld-probe.safetensors")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--n", type=int, default=40, help="prompts per cell of the probe table")
    ap.add_argument("--replace", action="store_true", help="replace --out if an earlier demo run made it")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        if not (args.replace and (out / MARKER).exists()):
            raise SystemExit(f"{out} already exists and is not empty; remove it or pass --out NEW_DIR "
                             f"(--replace only replaces a directory an earlier demo run wrote).")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by lorakit.demos.sdworld.demo; --replace may delete this directory\n")
    lines: list[str] = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    t0 = time.time()
    write_concept(out / "data")
    write_regularization(out / "reg")
    (out / "prompts.txt").write_text("# kohya sample prompts: --w/--h size, --d seed (--s steps, --l cfg)\n"
                                     + "\n".join(p + f" --s 20 --l {CFG:g}" for p in PROMPTS) + "\n")
    cfg_path = out / "sd.yaml"
    cfg = config(out, args.base.resolve(), args.epochs)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    times = {"validate": lorakit("validate", str(cfg_path), log=log), "train": lorakit("train", str(cfg_path), log=log)}
    run = out / "run"
    files = ([run / f"{NAME}-{e:06d}.safetensors" for e in range(SAVE_EVERY, args.epochs, SAVE_EVERY)]
             + [run / f"{NAME}.safetensors"])
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"the trainer did not write {missing}; see the output above.")
    times["grid"] = grid(out, args.base.resolve(), files, log)
    log(f"enlarged grid: {big_grid(out, files, args.epochs)}")
    t1 = time.time()
    trained, untrained = trained_sizes(cfg)
    rows = probe_rows(args.base.resolve(), files[-1], args.probe, args.n, sizes=trained)
    off = probe_rows(args.base.resolve(), files[-1], args.probe, max(8, args.n // 2), strengths=(1.0,),
                     sizes=untrained)[0] if untrained else None
    per_epoch = {f.stem: probe_rows(args.base.resolve(), f, args.probe, max(8, args.n // 2), strengths=(1.0,),
                                    sizes=trained)[0] for f in files[:-1]}
    times["probe"] = time.time() - t1
    times["total"] = time.time() - t0
    table = f"Sizes in the bucket list ({_sizes(trained)}):\n\n" + format_table(rows)
    if off:
        table += (f"\nSizes no bucket has ({_sizes(untrained)}), strength 1: {CONCEPT} with trigger "
                  f"{off['concept_with_trigger']:.0%}, no trigger read as the base's sample "
                  f"{off['base_kept_without_trigger']:.0%}.\n")
    (out / "probe_table.md").write_text(table)
    (out / "probe.json").write_text(json.dumps({"sizes": trained, "final": rows, "untrained_sizes": untrained,
                                                 "untrained_sizes_at_1": off, "per_epoch_at_1": per_epoch,
                                                 "seconds": {k: round(v, 1) for k, v in times.items()}}, indent=1))
    log(table)
    log("per epoch, strength 1.0: " + ", ".join(f"{k}: {CONCEPT} {v['concept_with_trigger']:.0%}, base kept "
                                                 f"{v['base_kept_without_trigger']:.0%}" for k, v in per_epoch.items()))
    log("seconds: " + json.dumps({k: round(v, 1) for k, v in times.items()}))
    log(f"outputs in {out}: run/ (LoRA files, samples, metrics), grid.png, probe_table.md")


def _sizes(sizes) -> str:
    return ", ".join(f"{w}x{h}" for w, h in sizes)


def grid(out: Path, base: Path, files: list[Path], log) -> float:
    """``lorakit sd grid``: LoRA strength across, one row per saved epoch file, for the trigger prompt."""
    return lorakit("sd", "grid", str(base), f"a red {NOUN} on a blue background <lora:{NAME}:1>",
                   "--x", "LoRA strength: " + ",".join(f"{s:g}" for s in STRENGTHS),
                   "--y", "LoRA file: " + ",".join(f.stem for f in files), "--lora-dir", str(out / "run"),
                   "--sampler", "Euler a", "--steps", "20", "--cfg", f"{CFG:g}", "--seed", "1", "--size", "32x32",
                   "-o", str(out / "grid.png"), log=log)


def big_grid(out: Path, files: list[Path], epochs: int, scale: int = 4) -> Path:
    """The grid's cells (``grid-cells/NNNNN-cellX-Y-Z.png``) enlarged ``scale`` times, with readable labels."""
    from PIL import Image

    from lorakit.sd.grid import contact_sheet

    cells = {tuple(int(v) for v in p.stem.split("cell")[1].split("-")[:2]): p for p in (out / "grid-cells").glob("*.png")}
    rows = [[Image.open(cells[(x, y)]).convert("RGB").resize((32 * scale, 32 * scale), Image.Resampling.NEAREST)
             for x in range(len(STRENGTHS))] for y in range(len(files))]
    labels = [f"epoch {SAVE_EVERY * (i + 1)}" for i in range(len(files) - 1)] + [f"epoch {epochs}"]
    sheet = contact_sheet(rows, labels, [f"strength {s:g}" for s in STRENGTHS])
    sheet.save(out / "grid-x4.png")
    return out / "grid-x4.png"


if __name__ == "__main__":
    main()
