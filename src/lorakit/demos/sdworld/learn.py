"""Learnability check without the trainer: a lorakit LoRA on the U-Net learns the ring concept.

    python -m lorakit.demos.sdworld.learn --base assets/sdworld-base --probe assets/sdworld-probe.safetensors

kohya's U-Net targets (every Linear/Conv2d inside a Transformer2DModel: attention and feed-forward
linears, proj_in/proj_out) get a lorakit LoRA; the text encoder stays frozen. The loss is SD's plain
epsilon MSE on the concept folder's latents (each image at its aspect-ratio bucket). The probe then
measures the strength table of :mod:`.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .concept import write_concept
from .evaluate import format_table, strength_table
from .model import load_pipeline
from .probe import load_probe
from .world import SIZES, to_tensor

UNET_TARGET_CLASSES = ("Transformer2DModel",)


def kohya_targets(unet: nn.Module) -> list[str]:
    """kohya's rule for the U-Net: Linear/Conv2d children of Transformer2DModel modules."""
    out = []
    for name, module in unet.named_modules():
        if type(module).__name__ in UNET_TARGET_CLASSES:
            out += [f"{name}.{c}" for c, m in module.named_modules() if c and isinstance(m, (nn.Linear, nn.Conv2d))]
    return out


def load_folder(folder: Path) -> list[tuple[torch.Tensor, str]]:
    """(pixels at the nearest-aspect bucket size, caption) for each image in the folder."""
    items = []
    for png in sorted(folder.glob("*.png")):
        img = Image.open(png).convert("RGB")
        ar = img.width / img.height
        w, h = min(SIZES, key=lambda s: abs(s[0] / s[1] - ar))
        items.append((to_tensor(img.resize((w, h), Image.Resampling.BOX)), png.with_suffix(".txt").read_text().strip()))
    return items


def train_lora(pipe, folder: Path, *, rank: int = 8, alpha: float = 8.0, lr: float = 1e-3, epochs: int = 4,
               batch: int = 4, repeats: int = 10, seed: int = 0, log=print) -> int:
    """Inject adapter 'sks' into ``pipe.unet`` and train it; returns the number of steps."""
    from lorakit import LoraConfig, inject

    torch.manual_seed(seed)
    unet, vae, sched = pipe.unet, pipe.vae, pipe.scheduler
    items = load_folder(folder)
    with torch.no_grad():
        tok = pipe.tokenizer([c for _, c in items], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        cond = pipe.text_encoder(tok.input_ids)[0]
        lat = [vae.encode(px[None]).latent_dist.mean[0] * vae.config.scaling_factor for px, _ in items]
    inject(unet, LoraConfig(r=rank, alpha=alpha, target_modules=kohya_targets(unet)), "sks")
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    alphas = sched.alphas_cumprod
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    by_size: dict[tuple, list[int]] = {}
    for i, x in enumerate(lat):
        by_size.setdefault(tuple(x.shape[-2:]), []).append(i)
    unet.train()
    step = 0
    for epoch in range(epochs):
        order = [i for idx in by_size.values() for i in idx * repeats]  # kohya: repeats per image, per bucket
        batches = []
        for idx in by_size.values():
            pool = [i for i in idx for _ in range(repeats)]
            rng.shuffle(pool)
            batches += [pool[k:k + batch] for k in range(0, len(pool), batch)]
        rng.shuffle(batches)
        total = 0.0
        for b in batches:
            x0, c = torch.stack([lat[i] for i in b]), cond[b]
            noise = torch.randn(x0.shape, generator=g)
            t = torch.randint(0, len(alphas), (len(b),), generator=g)
            a = alphas[t].view(-1, 1, 1, 1)
            loss = F.mse_loss(unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, c).sample, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
            step += 1
        log(f"epoch {epoch + 1}/{epochs}: {len(batches)} steps ({len(order)} samples), mean loss {total / len(batches):.4f}")
    unet.eval()
    return step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=Path("assets/sdworld-base"))
    ap.add_argument("--probe", type=Path, default=Path("assets/sdworld-probe.safetensors"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n", type=int, default=40, help="prompts per cell of the table")
    ap.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from lorakit import set_active_adapters

    pipe, probe = load_pipeline(args.base), load_probe(args.probe)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        steps = train_lora(pipe, write_concept(Path(tmp)), rank=args.rank, alpha=args.rank, lr=args.lr,
                           epochs=args.epochs)
    t_train = time.time() - t0
    rows = strength_table(pipe, probe, lambda s: set_active_adapters(pipe.unet, {"sks": s}), n=args.n)
    print(format_table(rows))
    result = {"steps": steps, "train_seconds": round(t_train, 1), "eval_seconds": round(time.time() - t0 - t_train, 1),
              "rows": rows}
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
