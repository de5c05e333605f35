"""FLUX.1 LoRA load-and-apply: lorakit vs diffusers' FluxPipeline loader, in one process, at FLUX.1's real shapes.

The transformer is diffusers' FluxTransformer2DModel with FLUX.1-dev's config (19 double and 38 single
blocks, width 3072, 11.9B parameters) built on the meta device; every parameter is then a zero-stride
bf16 view on CPU, so the model has its real shapes, dtype and device in a few bytes. Neither loader
reads base weights when it adds live adapters (both read shapes, dtype and device), so this times
what a 24 GB model would. The LoRA file is real: a kohya FLUX.1 file (``lora_unet_`` names, fused
``img_attn.qkv``/``linear1``) on every Linear of the double and single blocks as kohya trains them
(304 modules), rank 16, alpha 16, bf16, random values (about 150 MB at rank 16).

Timed, from the file path to an adapted transformer: ``lorakit.sd.load_lora`` (live adapters, fused
modules split onto to_q/to_k/to_v/proj_mlp) vs ``FluxPipeline.load_lora_weights`` (its kohya converter
+ PEFT injection; by default and with ``low_cpu_mem_usage=True``). Each round unloads again (untimed);
the order rotates every round. Run it alone (timings are shared-CPU sensitive):

    flock -x /tmp/cpu.lock .venv/bin/python benchmarks/dit_load.py [--rounds 5 --rank 16]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
from pathlib import Path

import torch
from _common import rotated_loads, setup

FLUX1_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                 axes_dims_rope=(16, 56, 56))
DTYPE = torch.bfloat16


def build_transformer():
    """FLUX.1-dev's transformer with zero-stride parameters: real shapes, almost no memory."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX1_DEV)
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            view = torch.zeros((), dtype=DTYPE).expand(p.shape)
            setattr(module, name, torch.nn.Parameter(view, requires_grad=False))
        for name, b in list(module.named_buffers(recurse=False)):
            module._buffers[name] = torch.zeros((), dtype=b.dtype).expand(b.shape)
    return model.eval()


def make_file(model, path: Path, rank: int, alpha: float = 16.0, seed: int = 0) -> int:
    """A kohya FLUX.1 file for every Linear of the blocks (fused names, as sd-scripts writes them)."""
    from lorakit.formats.dit_keys import fused_name, split_entry
    from lorakit.formats.lorafile import LoraFile, Naming
    from lorakit.formats.sd_io import write_lora

    g = torch.Generator().manual_seed(seed)
    groups: dict[tuple, list] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "blocks." in name:
            entry, index, k, _ = split_entry("flux1", name)
            groups.setdefault((entry, index), [None] * len(entry.split))[k] = module.weight.shape
    modules = {}
    for (entry, index), shapes in groups.items():
        out_f, in_f = sum(s[0] for s in shapes), shapes[0][1]
        modules[f"transformer.{fused_name(entry, index)}"] = {
            "lora_down.weight": (torch.randn(rank, in_f, generator=g) / in_f ** 0.5).to(DTYPE),
            "lora_up.weight": (torch.randn(out_f, rank, generator=g) * 0.01).to(DTYPE),
            "alpha": torch.tensor(alpha, dtype=DTYPE)}
    write_lora(LoraFile(modules, {}, Naming(dit="flux1", fused=True)), path, to="kohya")
    return len(modules)


def lorakit_load(pipe, path):
    from lorakit import sd

    sd.load_lora({"transformer": pipe.transformer}, path, names=["bench"])


def lorakit_unload(pipe):
    import lorakit

    lorakit.unload(pipe.transformer)


def diffusers_load(pipe, path, low_cpu_mem_usage=False):
    """FluxPipeline.load_lora_weights; ``low_cpu_mem_usage`` skips PEFT's random init of the factors."""
    pipe.load_lora_weights(str(path), adapter_name="bench", low_cpu_mem_usage=low_cpu_mem_usage)


def time_loads(pipe, path, rounds: int) -> dict[str, list[float]]:
    def unload(p):
        p.unload_lora_weights()

    impls = {"lorakit": (lorakit_load, lorakit_unload), "diffusers": (diffusers_load, unload),
             "diffusers low_cpu_mem_usage": (functools.partial(diffusers_load, low_cpu_mem_usage=True), unload)}
    return rotated_loads(impls, pipe, path, rounds)


@torch.no_grad()
def check_same_update(pipe, path) -> float:
    """Relative difference of one split module's ΔW as lorakit and diffusers apply it (both must agree)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from lorakit.layer import LoraLayer

    name = "single_transformer_blocks.3.proj_mlp"
    lorakit_load(pipe, path)
    ours = pipe.transformer.get_submodule(name)
    assert isinstance(ours, LoraLayer)
    mine = ours.adapters["bench"].delta_weight().float()
    lorakit_unload(pipe)
    diffusers_load(pipe, path)
    theirs = pipe.transformer.get_submodule(name)
    assert isinstance(theirs, BaseTunerLayer)
    ref = theirs.get_delta_weight("bench").float()
    pipe.unload_lora_weights()
    return float((mine - ref).norm() / ref.norm())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    setup(2)
    from diffusers import FluxPipeline

    model = build_transformer()
    n_params = sum(p.numel() for p in model.parameters())
    pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flux_lora.safetensors"
        n = make_file(model, path, args.rank)
        size = path.stat().st_size / 2**20
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; FLUX.1-dev transformer "
              f"({n_params / 1e9:.1f}B params, bf16, zero-stride weights); kohya LoRA: {n} modules, rank {args.rank}, "
              f"bf16, {size:.0f} MiB; {args.rounds} rotated rounds")
        print(f"  same ΔW from both loaders (single block 3 proj_mlp): relative difference {check_same_update(pipe, path):.1e}")
        times = time_loads(pipe, path, args.rounds)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in times.items():
            print(f"  load+apply {k:28s}: median {med[k] * 1e3:8.1f} ms   rounds {[round(x * 1e3) for x in v]}")
        for k in list(med)[1:]:
            print(f"  lorakit is {med[k] / med['lorakit']:.2f}x faster than {k}")


if __name__ == "__main__":
    main()
