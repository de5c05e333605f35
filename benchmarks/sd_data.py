"""SD data pipeline: what the latent cache saves per epoch, and what a second run pays for a disk cache.

A small diffusers AutoencoderKL (SD's 8x layout, narrower channels) encodes N generated PNGs. Times:
scanning the folders, the first run (scan + encode every image + write the disk cache), a second run
(scan + hash + read the cache), and one epoch of batches read from the latent cache against the
uncached way the diffusers scripts take (decode, resize, crop every image and run the VAE every step).

    flock /tmp/lorakit-heavy.lock python benchmarks/sd_data.py --images 24 --size 256 [--vae-batch 8] [--device cuda]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from lorakit.tasks.diffusion.dataset import DatasetArgs, build_dataset


def make_vae(device: str):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        block_out_channels=(32, 64, 64, 64), norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    return vae.to(device).eval().requires_grad_(False)


def make_images(root: Path, n: int, size: int) -> None:
    g = torch.Generator().manual_seed(0)
    d = root / "10_sks thing"
    d.mkdir(parents=True)
    shapes = [(size, size), (size * 5 // 4, size), (size, size * 5 // 4), (size * 3 // 2, size * 3 // 4)]
    for i in range(n):
        w, h = shapes[i % len(shapes)]
        arr = torch.randint(0, 256, (h // 8, w // 8, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(arr).resize((w, h), Image.Resampling.BICUBIC).save(d / f"{i:03d}.png")
        (d / f"{i:03d}.txt").write_text(f"sks thing, photo {i}")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--vae-batch", type=int, default=8, help="data.vae_batch_size while caching")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    vae = make_vae(a.device)
    factor = 0.18215

    def encode(pixels):
        return vae.encode(pixels.to(a.device)).latent_dist.sample() * factor

    work = Path(tempfile.mkdtemp(prefix="lorakit-sd-data-"))
    try:
        make_images(work / "img", a.images, a.size)
        common = {"train_data_dir": str(work / "img"), "resolution": a.size, "enable_bucket": True,
                  "min_bucket_reso": a.size // 2, "max_bucket_reso": a.size * 2, "cache_dir": str(work / "cache")}
        _, t_scan = timed(lambda: build_dataset(DatasetArgs(**common), batch_size=a.batch, seed=0, scan_only=True))
        cached = DatasetArgs(**common, cache_latents_to_disk=True, vae_batch_size=a.vae_batch)
        b, t_first = timed(lambda: build_dataset(cached, batch_size=a.batch, seed=0, encode_latents=encode,
                                                 vae_key="bench-vae"))
        b, t_second = timed(lambda: build_dataset(cached, batch_size=a.batch, seed=0, encode_latents=encode,
                                                  vae_key="bench-vae"))
        _, t_epoch_cached = timed(lambda: [x["latents"].to(a.device) for x in b.epoch(0)])
        plain = build_dataset(DatasetArgs(**common, cache_latents=False), batch_size=a.batch, seed=0)
        with torch.no_grad():
            _, t_epoch_plain = timed(lambda: [encode(x["pixels"]) for x in plain.epoch(0)])
    finally:
        shutil.rmtree(work)
    samples = sum(r["samples"] for r in b.table())
    print(f"{a.images} images of ~{a.size}px x 10 repeats = {samples} samples, batch {a.batch}, "
          f"{len(b)} batches/epoch, device {a.device}, torch threads {torch.get_num_threads()}")
    print("| phase | seconds |\n|---|---|")
    print(f"| scan folders (decode + size + captions, validate) | {t_scan:.2f} |")
    print(f"| first run: scan + encode {a.images} images + write disk cache | {t_first:.2f} |")
    print(f"| second run: scan + hash + read disk cache (0 encodes) | {t_second:.2f} |")
    print(f"| one epoch from the latent cache | {t_epoch_cached:.2f} |")
    print(f"| one epoch uncached (load, resize, crop, VAE every step) | {t_epoch_plain:.2f} |")
    print(f"an uncached epoch's data costs {t_epoch_plain / t_epoch_cached:.0f}x a cached one; the cache pays for "
          f"itself after {t_first / t_epoch_plain:.2f} epochs")


if __name__ == "__main__":
    main()
