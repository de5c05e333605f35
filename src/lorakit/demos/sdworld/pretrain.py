"""Pretrain the sdworld base model on procedural images (CPU, 2 threads, about 28 minutes).

    python -m lorakit.demos.sdworld.pretrain --out assets/sdworld-base

Stage 1 trains the AutoencoderKL (MSE + 1e-6 KL, as SD's VAE objective without the GAN), stage 2 caches
the latents of a fixed scene set and trains the text encoder and U-Net together with the epsilon loss
(DDPM, SD 1.5's noise schedule, min-SNR-5 weighting, 10% empty captions for classifier-free guidance,
noise offset 0.05, EMA weights saved). Shapes sit near the centre at nearly one size: a 2-core budget
buys a model that draws five shapes well, not one that also places them anywhere. Rings are never drawn: that is the concept a LoRA learns later. Everything is a
function of ``--seed``; the result is the diffusers directory ``--out``.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from .model import build_models, build_tokenizer, save_pipeline
from .world import SIZES, draw, held_out, random_scene, to_tensor


def scenes(n: int, seed: int, exclude=frozenset(), square_share: float = 0.5) -> list:
    """``n`` base-world scenes (no rings), half of them square, the rest over the other aspect ratios."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        size = SIZES[0] if rng.random() < square_share else rng.choice(SIZES[1:])
        out.append(random_scene(rng, size=size, exclude=exclude, centred=True))
    return out


def pixels_by_size(items) -> dict:
    """{(w, h): (pixels [N,3,h,w], [scene, ...])} grouped so that every batch has one size."""
    groups = defaultdict(list)
    for sc in items:
        groups[(sc.width, sc.height)].append(sc)
    return {k: (torch.stack([to_tensor(draw(s)) for s in v]), v) for k, v in groups.items()}


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def _batch(groups: dict, rng: random.Random, batch: int):
    key = rng.choices(list(groups), weights=[len(v[1]) for v in groups.values()])[0]
    data, items = groups[key]
    idx = [rng.randrange(len(items)) for _ in range(batch)]
    return data[idx], [items[i] for i in idx]


def train_vae(vae, groups: dict, steps: int, seed: int, batch: int = 16, lr: float = 2e-3, log=print) -> None:
    rng = random.Random(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    vae.train()
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=50)
        px, _ = _batch(groups, rng, batch)
        post = vae.encode(px).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.mse_loss(rec, px) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.5f} ({time.time() - t0:.0f}s)")
    vae.eval()


@torch.no_grad()
def encode_latents(vae, groups: dict) -> dict:
    """Posterior means, grouped like ``groups`` (unscaled)."""
    out = {}
    for key, (px, items) in groups.items():
        out[key] = (torch.cat([vae.encode(px[i:i + 64]).latent_dist.mean for i in range(0, len(px), 64)]), items)
    return out


class Ema:
    """Exponential moving average of parameters (the weights that are saved)."""

    def __init__(self, modules, decay: float):
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self):
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self):
        for s, p in zip(self.shadow, self.params, strict=True):
            p.copy_(s)


def train_denoiser(models: dict, tokenizer, latents: dict, steps: int, seed: int, batch: int = 64,
                   lr: float = 2e-3, min_snr: float = 5.0, drop: float = 0.1, noise_offset: float = 0.05, log=print) -> None:
    """Joint text-encoder + U-Net training with SD's epsilon objective on scaled latents."""
    unet, te, sched = models["unet"], models["text_encoder"], models["scheduler"]
    scale = models["vae"].config.scaling_factor
    rng = random.Random(seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    params = [{"params": unet.parameters(), "lr": lr}, {"params": te.parameters(), "lr": lr / 2}]
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    ema = Ema([unet, te], decay=0.995)
    alphas = sched.alphas_cumprod
    unet.train()
    te.train()
    t0 = time.time()
    for step in range(steps):
        for g, base in zip(opt.param_groups, (lr, lr / 2), strict=True):
            g["lr"] = lr_at(step, steps, base)
        lat, items = _batch(latents, rng, batch)
        x0 = lat * scale
        captions = ["" if rng.random() < drop else sc.caption() for sc in items]
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        noise = torch.randn(x0.shape, generator=gen)
        noise = noise + noise_offset * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=gen)
        t = torch.randint(0, len(alphas), (x0.shape[0],), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, te(ids)[0]).sample
        snr = a.flatten() / (1 - a.flatten())
        per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per * snr.clamp(max=min_snr) / snr).mean()  # min-SNR-gamma (Hang et al. 2023)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), 1.0)
        opt.step()
        ema.update()
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    ema.copy_to()
    unet.eval()
    te.eval()


def pretrain(out: Path, *, seed: int = 0, n_images: int = 8000, vae_steps: int = 1500, steps: int = 2400,
             log=print) -> dict:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(Path(out) / "_tokenizer_src")
    models = build_models(tokenizer, seed=seed)
    t0 = time.time()
    groups = pixels_by_size(scenes(n_images, seed, exclude=held_out()))
    train_vae(models["vae"], groups, vae_steps, seed, log=log)
    t_vae = time.time() - t0
    raw = encode_latents(models["vae"], groups)
    std = torch.cat([v[0].flatten() for v in raw.values()]).std().item()
    models["vae"].register_to_config(scaling_factor=round(1.0 / std, 5))
    log(f"latent std {std:.4f} -> scaling_factor {1 / std:.5f}")
    train_denoiser(models, tokenizer, raw, steps, seed, log=log)
    save_pipeline(models, tokenizer, Path(out))
    for f in (Path(out) / "_tokenizer_src").iterdir():
        f.unlink()
    (Path(out) / "_tokenizer_src").rmdir()
    return {"vae_seconds": round(t_vae, 1), "total_seconds": round(time.time() - t0, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("assets/sdworld-base"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=8000)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--threads", type=int, default=1)  # 2 threads crawl when the 2 cores are shared
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    stats = pretrain(args.out, seed=args.seed, n_images=args.images, vae_steps=args.vae_steps, steps=args.steps)
    print(stats)


if __name__ == "__main__":
    main()
