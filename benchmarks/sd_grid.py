"""Strength and file switching in ``lorakit sd grid``: live adapters instead of reloads or merge round trips.

The model is an SD1-layout pipeline built from configs (CLIP text encoder 64 wide, 3 layers; U-Net
with (32, 64, 64) channels and cross-attention; the tests' character-level tokenizer), 32x32 images,
10 Euler a steps, CFG 7, on CPU. Three kohya LoRA files (rank 8, every Transformer2DModel and CLIP
attention/MLP Linear, random values) play three epochs of one training run.

Measured, median of rounds:
- one image, LoRA active (``generate_images``);
- a strength change: ``LoraStack.activate`` with a new strength on an already-loaded file (what a grid
  cell does before generating), as a % of one image;
- a 3x3 grid, X = LoRA strength (0.5, 0.75, 1), Y = LoRA file (3 epochs), starting with no file loaded
  (file loading, hashing, prompt encoding and switching included), vs the same 9 images' denoising alone
  (adapters switched and prompts encoded beforehand, untimed).

    flock /tmp/lorakit-heavy.lock .venv/bin/python benchmarks/sd_grid.py [--rounds 3 --steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import setup

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # benchmark the tree this file is in
sys.path.insert(0, str(ROOT / "tests"))  # the tests' tiny tokenizer and LoRA builders

UNET = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8,
            norm_num_groups=16, cross_attention_dim=64)
GEN = {"width": 32, "height": 32, "steps": 10, "cfg_scale": 7.0, "seed": 1, "sampler": "Euler a"}


def build_pipe():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from sd_pipes import tiny_text_encoder, tiny_tokenizer

    tok = tiny_tokenizer()
    te = tiny_text_encoder(tok, hidden=64)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET).eval()
    torch.manual_seed(3)
    vae = AutoencoderKL(latent_channels=4, block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4,
                        sample_size=32).eval()  # x2 down: 16x16 latents for 32x32 images
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=EulerDiscreteScheduler(steps_offset=1), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def write_files(pipe, directory: Path) -> list[str]:
    from sd_models import random_lora

    from lorakit.formats.sd_io import write_lora

    names = ["style-000001", "style-000002", "style"]
    for i, name in enumerate(names):
        lf = random_lora({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, rank=8, seed=i)
        for t in lf.modules.values():  # small updates, as trained files have
            t["lora_up.weight"] *= 0.05
        write_lora(lf, directory / f"{name}.safetensors")
    return names


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def one_round(index, names: list[str], prompt: str) -> tuple[float, float, float, float]:
    """(grid s, its 9 denoising runs alone s, one image s, strength change s) on a fresh pipeline."""
    from lorakit.sd.denoise import Plan, decode, sample_latents
    from lorakit.sd.encode import encode_prompt
    from lorakit.sd.loras import LoraStack
    from lorakit.sd.xyz import Axis, xyz_grid

    pipe = build_pipe()  # fresh: no file loaded yet
    x, y = Axis.parse("LoRA strength: 0.5, 0.75, 1"), Axis.parse(f"LoRA file: {', '.join(names)}")
    grid = timed(lambda: xyz_grid(pipe, prompt, "ugly", x=x, y=y, lora_dir=index, **GEN))
    alone, stack = 0.0, LoraStack.of(pipe)
    for name in names:  # the same 9 images, denoising only: adapters set and prompts encoded beforehand
        for s in (0.5, 0.75, 1.0):
            stack.activate([(index.resolve(name), s, s)])
            cond, uncond = encode_prompt(pipe, prompt.split("<")[0]), encode_prompt(pipe, "ugly")
            plan = Plan(lambda step, c=cond: [(c, 1.0)], lambda step, u=uncond: u, encode_prompt(pipe, ""))
            gen = torch.Generator().manual_seed(GEN["seed"])
            kw = {k: GEN[k] for k in ("width", "height", "steps", "cfg_scale")}
            alone += timed(lambda p=plan, g=gen, kw=kw: decode(pipe, sample_latents(pipe, p, generator=g, where="",
                                                                                     **kw), ""))
    path = index.resolve("style")
    change = statistics.median(timed(lambda s=s: stack.activate([(path, s, s)])) for s in (0.3, 0.6, 0.9, 0.4, 0.8))
    return grid, alone, alone / 9, change


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=GEN["steps"])
    args = ap.parse_args()
    GEN["steps"] = args.steps
    setup(threads=2)
    from lorakit.sd.loras import LoraIndex

    with tempfile.TemporaryDirectory() as tmp:
        names = write_files(build_pipe(), Path(tmp))
        index = LoraIndex(tmp)
        rounds = [one_round(index, names, "a red cat, (w1 w2:1.2) <lora:style:1>") for _ in range(args.rounds)]
    grid, alone, one, change = (statistics.median(col) for col in zip(*rounds, strict=True))
    print(f"one image ({GEN['width']}x{GEN['height']}, {GEN['steps']} steps, LoRA active, denoising): {one:.3f} s")
    print(f"strength change (set_active_adapters on a loaded file): {change * 1e3:.2f} ms = "
          f"{100 * change / one:.2f}% of one image (goal < 2%)")
    print(f"3x3 strength x file grid, loading included: {grid:.2f} s; its 9 denoising runs alone: {alone:.2f} s; "
          f"ratio {grid / alone:.3f} (goal <= 1.1)")


if __name__ == "__main__":
    main()
