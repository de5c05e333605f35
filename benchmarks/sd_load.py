"""SDXL LoRA load-and-apply: lorakit vs diffusers' loader, in one process; merge and resize timings.

The U-Net is diffusers' UNet2DConditionModel with the real SDXL config, in fp16, its weights left
uninitialised (``to_empty``): applying a LoRA as live adapters never reads them, and this keeps
one 5 GB model in memory instead of ten. The LoRA file is kohya's SDXL default: the 722 Linear
modules of the Transformer2DModels (SAI names), rank 32, alpha 16, fp16, random values.

Timed, from the file path to an adapted U-Net: ``lorakit.sd.load_lora(..., mode="adapter")`` vs
``lora_state_dict`` + ``load_lora_into_unet`` (diffusers' pipeline loader, PEFT backend; by default
and with ``low_cpu_mem_usage=True``, which skips PEFT's random init of the factors); each
round unloads again (untimed) and the order rotates every round.

    .venv/bin/python benchmarks/sd_load.py [--rounds 5 --rank 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import PeakRSS, rotated_loads, setup

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816)


def build_unet(dtype=torch.float16):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET).to(dtype)  # cast on meta: no memory touched
    return unet.to_empty(device="cpu").eval().requires_grad_(False)


def make_file(unet, path: Path, rank: int, alpha: float = 16.0, seed: int = 0, dtype=torch.float16):
    """A kohya SDXL LoRA for ``unet``'s Transformer2DModel Linear layers, with SAI names."""
    from lorakit.formats import kohya
    from lorakit.formats.lorafile import LoraFile, Naming
    from lorakit.formats.sd_keys import layout_from_config

    g = torch.Generator().manual_seed(seed)
    modules = {}
    for name, module in unet.named_modules():
        if type(module).__name__ != "Transformer2DModel":
            continue
        for child, sub in module.named_modules():
            if isinstance(sub, torch.nn.Linear):
                out_f, in_f = sub.weight.shape
                modules[f"unet.{name}.{child}"] = {
                    "lora_down.weight": (torch.randn(rank, in_f, generator=g) / in_f ** 0.5).to(dtype),
                    "lora_up.weight": (torch.randn(out_f, rank, generator=g) * 0.01).to(dtype),
                    "alpha": torch.tensor(alpha, dtype=dtype)}
    lf = LoraFile(modules, {}, Naming("sai", True, layout_from_config(unet.config)))
    kohya.write_kohya(lf, path, family="sdxl")
    return len(modules)


def lorakit_load(unet, path):
    from lorakit import sd

    sd.load_lora({"unet": unet}, path, names=["bench"], te_strength=0)


def lorakit_unload(unet):
    import lorakit

    lorakit.unload(unet)


def diffusers_load(unet, path, low_cpu_mem_usage=False):
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin as loader

    state, alphas = loader.lora_state_dict(str(path), unet_config=unet.config)
    loader.load_lora_into_unet(state, alphas, unet, adapter_name="bench", low_cpu_mem_usage=low_cpu_mem_usage)


def diffusers_fast_load(unet, path):  # skips PEFT's random init of the factors the file overwrites
    diffusers_load(unet, path, low_cpu_mem_usage=True)


def diffusers_unload(unet):
    unet.unload_lora()


def time_loads(unet, path, rounds: int) -> dict[str, list[float]]:
    impls = {"lorakit": (lorakit_load, lorakit_unload), "diffusers": (diffusers_load, diffusers_unload),
             "diffusers low_cpu_mem_usage": (diffusers_fast_load, diffusers_unload)}
    return rotated_loads(impls, unet, path, rounds)


def time_tools(path: Path, rank: int, out_dir: Path) -> dict[str, float]:
    """Merge (cat, svd) of two copies and resize to half rank: lorakit's QR-based SVD vs a dense SVD."""
    from lorakit.formats.lorafile import LoraFile
    from lorakit.formats.sd_io import read_lora
    from lorakit.tools import merge_loras, resize_lora

    a = read_lora(path)
    b = read_lora(path)
    out = {}
    t = time.perf_counter()
    merge_loras([a, b], [0.7, 0.3], "cat")
    out["merge cat (exact)"] = time.perf_counter() - t
    t = time.perf_counter()
    merge_loras([a, b], [0.7, 0.3], "svd", rank=rank)
    out[f"merge svd -> rank {rank}"] = time.perf_counter() - t
    t = time.perf_counter()
    resize_lora(a, rank=rank // 2)
    out[f"resize -> rank {rank // 2}"] = time.perf_counter() - t
    # kohya resize_lora.py's way, a full SVD of each dense up·down, on a sample (all 722 take many minutes)
    sample = dict(list(a.modules.items())[:: max(1, len(a.modules) // 24)])
    t = time.perf_counter()
    resize_lora(LoraFile(sample, {}, a.naming), rank=rank // 2)
    out[f"resize, {len(sample)}-module sample, lorakit"] = time.perf_counter() - t
    t = time.perf_counter()
    for m in sample.values():
        torch.linalg.svd(m["lora_up.weight"].float() @ m["lora_down.weight"].float(), full_matrices=False)
    out[f"resize, {len(sample)}-module sample, dense SVD"] = time.perf_counter() - t
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--skip-tools", action="store_true")
    ap.add_argument("--tools-only", action="store_true")
    args = ap.parse_args()
    setup(2)
    with PeakRSS() as mem:
        unet = build_unet()
    n_params = sum(p.numel() for p in unet.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sdxl_lora.safetensors"
        n = make_file(unet, path, args.rank)
        size = path.stat().st_size / 2**20
        print(f"SDXL U-Net fp16 ({n_params / 1e9:.2f}B params, RSS +{mem.peak / 2**30:.1f} GiB); LoRA file: {n} modules, "
              f"rank {args.rank}, fp16, {size:.0f} MiB")
        if args.tools_only:
            args.rounds = 0
        times = time_loads(unet, path, args.rounds) if args.rounds else {}
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in times.items():
            print(f"  load+apply {k:28s}: median {med[k] * 1e3:8.1f} ms   rounds {[round(x * 1e3) for x in v]}")
        for k in list(med)[1:]:
            print(f"  lorakit is {med[k] / med['lorakit']:.2f}x faster than {k}")
        if not args.skip_tools:
            del unet
            for k, v in time_tools(path, args.rank, Path(tmp)).items():
                print(f"  {k:34s}: {v * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
