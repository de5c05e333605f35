"""``lorakit validate``'s memory calculator against measured training peaks of diffusion runs (CPU, one process).

Models (random weights, built once under the temp dir): the SD1-shaped pipeline of ``sd_train.py`` (its U-Net,
VAE x8 and 4-layer CLIP) at 256x256, and a FLUX.1 pipeline around ``dit_train.py``'s transformer (2 double + 4
single blocks, width 256) with a 16-channel x2 VAE, a 128-wide CLIP and a 256-wide T5 at 128x128 (4096
latent pixels: 1024 image tokens) and 32 T5 tokens. 4 images x 1 repeat, 3 optimizer steps, AdamW.

Candidates (``--only``): SD LoRA r16 on cached latents (sd-lora); SD LoCon (conv_dim 8) with the VAE encoding
every step (sd-locon-vae); the same with gradient checkpointing (sd-locon-gc); FLUX.1 LoRA r16 on cached latents
and text (flux-lora); FLUX.1 QLoRA NF4 with T5/CLIP in every step (flux-qlora). Each runs ``lorakit.train.run``
in a fresh process (big allocations through mmap, so freed memory leaves RSS at once) after a one-step
warm-up run of the same config (it imports what a run imports), and reports, above the RSS then, the peak from
the first step on (VmHWM reset when training begins);
"estimate" is the calculator's one-process total for the same config and dataset.

    flock -x /tmp/cpu.lock .venv/bin/python benchmarks/sd_memory.py [--only sd-lora flux-lora]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import EXACT_RSS_ENV, _status, env_without_heap_policy, training_peaks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' tiny tokenizers and VAE
CACHE = Path(tempfile.gettempdir()) / "lorakit-bench-sd-memory"
#: name -> (model, batch size, image side, data keys, network keys, train keys)
CANDIDATES = {
    "sd-lora": ("sd", 2, 256, {}, {"dim": 16, "alpha": 16}, {}),
    "sd-locon-vae": ("sd", 2, 256, {"cache_latents": False}, {"dim": 16, "alpha": 16, "conv_dim": 8}, {}),
    "sd-locon-gc": ("sd", 2, 256, {"cache_latents": False}, {"dim": 16, "alpha": 16, "conv_dim": 8},
                    {"gradient_checkpointing": True}),
    "flux-lora": ("flux", 2, 128, {"cache_text_encoder_outputs": True}, {"dim": 16, "alpha": 16}, {}),
    "flux-qlora": ("flux", 2, 128, {}, {"dim": 16, "alpha": 16, "quantize": "nf4"}, {}),
}


def sd_pipeline():
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from sd_train import build_parts, build_unet

    parts = build_parts()
    return StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                                   unet=build_unet(), scheduler=DDPMScheduler.from_config(parts["scheduler_config"]),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def flux_pipeline():
    import dit_models
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from dit_train import build_transformer
    from sd_pipes import tiny_tokenizer
    from transformers import T5Config, T5EncoderModel

    t5_tok = dit_models.t5_tokenizer()
    torch.manual_seed(4)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=256, d_kv=64, d_ff=512, num_layers=2, num_heads=4,
                                 feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0)).eval()
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=dit_models.vae16(),
                        text_encoder=dit_models.clip(128), tokenizer=tiny_tokenizer(), text_encoder_2=t5,
                        tokenizer_2=t5_tok, transformer=build_transformer())


def model_dir(kind: str) -> Path:
    path = CACHE / kind
    if not (path / "model_index.json").is_file():
        (sd_pipeline() if kind == "sd" else flux_pipeline()).save_pretrained(path)
    return path


def images(side: int) -> Path:
    import sd_pipes

    path = CACHE / f"img-{side}"
    if not path.is_dir():
        sd_pipes.save_dataset(path, n=4, repeats=1, size=(side, side))
    return path


def config(name: str, out: Path, steps: int) -> dict:
    kind, batch, side, data, network, train = CANDIDATES[name]
    return {"task": "diffusion", "model": {"path": str(model_dir(kind)), "device": "cpu"},
            "data": {"train_data_dir": str(images(side)), "resolution": side, "enable_bucket": False,
                     "caption_extension": ".txt", **data},
            "network": {**network, **({"train_unet_only": True} if kind == "flux" else {})},
            "train": {"output_dir": str(out), "output_name": name, "max_steps": steps, "batch_size": batch,
                      "lr": 1e-4, "progress": False, "plot": False, "keep_heap": False, "seed": 0,
                      "save_every_n_epochs": None, "log_every": 1,
                      **({"t5xxl_max_token_length": 32} if kind == "flux" else {}), **train}}


def child(name: str, out: str, steps: int) -> None:
    """One candidate in this fresh process: prints {"load": bytes, "train": bytes} above the RSS of the runtime.
    The runtime is everything a run imports and keeps (diffusers and transformers load their model modules
    lazily, bitsandbytes' kernels on first use): a one-step warm-up run of the same config loads it, then its
    models are freed and the heap trimmed before the measured run."""
    import ctypes
    import gc

    from lorakit.tasks.diffusion.config import from_dict
    from lorakit.train import run

    run(from_dict(config(name, Path(out) / "warm-up", 1)), quiet=True)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    marks: dict = {}
    run(from_dict(config(name, Path(out) / "run", steps)), [training_peaks(marks, _status("VmRSS"))], quiet=True)
    print(json.dumps(marks), flush=True)


def estimate(name: str, steps: int) -> int:
    from lorakit.tasks.diffusion.config import from_dict
    from lorakit.tasks.diffusion.dataset import build_dataset
    from lorakit.tasks.diffusion.estimate import diffusion_estimate

    cfg = from_dict(config(name, CACHE / "unused", steps))
    data = build_dataset(cfg.data, batch_size=cfg.train.batch_size, seed=0, scan_only=True)
    return sum(diffusion_estimate(cfg, data).per_process("ddp", 1).values())


def measure(name: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"sdmem-{name}-") as out:
        p = subprocess.run([sys.executable, __file__, "--child", name, "--out", out, "--steps", str(steps)],
                           env=env_without_heap_policy() | EXACT_RSS_ENV | {"LORAKIT_NUM_THREADS": "1",
                                                                            "LORAKIT_CACHE": str(CACHE / "c")},
                           capture_output=True, text=True, timeout=1800)
    if p.returncode:
        raise SystemExit(f"{name} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--child")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out, args.steps)
        return
    import torch

    print(f"torch {torch.__version__}, one process, 1 thread, {args.steps} steps")
    mb = 2 ** 20
    print(f"{'candidate':<14}{'train peak MB':>15}{'estimate MB':>13}{'est/measured':>14}")
    for name in args.only:
        peak, est = measure(name, args.steps)["train"], estimate(name, args.steps)
        print(f"{name:<14}{peak / mb:>15.1f}{est / mb:>13.1f}{est / peak:>14.2f}", flush=True)


if __name__ == "__main__":
    main()
