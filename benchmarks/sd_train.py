"""SD LoRA training benchmark: lorakit's diffusion step vs the frozen floor vs diffusers' recipe, in one process.

Model: an SD1-shaped U-Net (block channels 64/128/256, two layers per block, cross-attention in the first
two down / last two up blocks, 8 heads, 256-wide context), 32x32 latents, batch 2; LoRA rank 16 (alpha 16)
on kohya's targets (every Linear/Conv2d in the transformer blocks). The recipe is diffusers'
``train_text_to_image_lora.py``: ``unet.add_adapter(peft.LoraConfig(...))`` on the same modules, the same
batch. The floor is the same step on the frozen U-Net (gradients reach the noisy input only).

* step: rotated rounds of the three steps (noise, U-Net forward/backward, fused AdamW) on cached inputs;
* epoch: 4 images x 5 repeats at 256x256 (10 steps of batch 2): lorakit with its latent and text-encoder
  caches (filling them is timed) vs the diffusers scripts' way (VAE and text encoder every step);
* memory: peak RSS of three steps in a fresh process per candidate (CPU) or peak CUDA memory.

    .venv/bin/python benchmarks/sd_train.py [--rounds 5 --steps 4] [--device cuda]
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import adamw, candidate_peaks, header, paired, step_benchmark_args, timed_rounds
from train_step import make_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
RANK, BATCH, CONTEXT = 16, 2, 256


def build_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(64, 128, 256),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8,
        cross_attention_dim=CONTEXT, norm_num_groups=32).eval()


def build_parts():
    """VAE (x8 down), CLIP text encoder (4 layers, 256 wide) and tokenizer, scheduler config."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from sd_pipes import tiny_tokenizer

    torch.manual_seed(1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 128, 128),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, norm_num_groups=32, sample_size=256).eval()
    tok = tiny_tokenizer()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=CONTEXT, intermediate_size=4 * CONTEXT,
                                      num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=77,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id)).eval()
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return {"vae": vae, "text_encoder": te, "tokenizer": tok, "scheduler_config": dict(sched.config)}


def lorakit_net(unet, parts, device):
    from lorakit.tasks.diffusion.config import NetworkArgs, SDTrainArgs
    from lorakit.tasks.diffusion.family import FAMILIES
    from lorakit.tasks.diffusion.network import add_network
    from lorakit.tasks.diffusion.step import SDNetwork

    comps = {**parts, "unet": unet}
    add_network(comps, NetworkArgs(dim=RANK, alpha=RANK, train_unet_only=True), ("text_encoder",),
                {"unet": 1e-4, "text_encoder": 0.0})
    for k in ("unet", "vae", "text_encoder"):
        comps[k].to(device)
    return SDNetwork(FAMILIES["sd1"], comps, SDTrainArgs(), "epsilon")


def peft_unet(unet, targets):
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=targets))
    return unet


def recipe_loss(unet, sched, latents, hidden):
    """diffusers' train_text_to_image_lora.py step body (epsilon, no SNR weighting)."""
    noise = torch.randn_like(latents)
    t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    noisy = sched.add_noise(latents, noise, t)
    pred = unet(noisy, t, hidden, return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="mean")


def candidates(device):
    """(steps, models): floor, lorakit and PEFT steps on the same cached batch."""
    from diffusers import DDPMScheduler

    from lorakit.model import lora_layers

    parts = build_parts()
    base = build_unet()
    net = lorakit_net(copy.deepcopy(base), parts, device)
    targets = [n for n, _ in lora_layers(net.unet)]
    pf = peft_unet(copy.deepcopy(base), targets).to(device)
    floor = copy.deepcopy(base).to(device).requires_grad_(False)
    sched = DDPMScheduler.from_config(parts["scheduler_config"])
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(BATCH, 4, 32, 32, generator=g).to(device)
    hidden = torch.randn(BATCH, 77, CONTEXT, generator=g).to(device)
    batch = {"latents": latents, "te_hidden": hidden, "loss_weight": torch.ones(BATCH, device=device)}

    def floor_loss():
        return recipe_loss(floor, sched, latents.clone().requires_grad_(), hidden)

    steps = {"floor": make_step(floor, floor_loss), "lorakit": make_step(net, lambda: net(batch)),
             "peft": make_step(pf, lambda: recipe_loss(pf, sched, latents, hidden))}
    return steps, {"lorakit": net, "peft": pf}


def epoch_times(device, root: Path) -> dict[str, float]:
    """Seconds for one epoch: lorakit with caches (filled inside the timing) vs VAE + text encoder every step."""
    from diffusers import DDPMScheduler
    from PIL import Image

    from lorakit.model import lora_layers
    from lorakit.tasks.diffusion.dataset import DatasetArgs, build_dataset

    folder = root / "5_sks dog"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        Image.fromarray((torch.rand(256, 256, 3, generator=g) * 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"sks dog, photo number {i}")
    parts = build_parts()
    base = build_unet()
    net = lorakit_net(copy.deepcopy(base), parts, device)
    pf = peft_unet(copy.deepcopy(base), [n for n, _ in lora_layers(net.unet)]).to(device)
    args = dict(train_data_dir=str(root), resolution=256, caption_extension=".txt", cache_dir=str(root / "cache"))
    out = {}
    opt = adamw([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    t0 = time.perf_counter()
    cached = build_dataset(DatasetArgs(**args, cache_text_encoder_outputs=True), batch_size=BATCH, seed=0,
                           encode_latents=net.encode_latents, vae_key="bench",
                           encode_text=torch.no_grad()(net.encode_text), text_key="bench")
    for b in cached.epoch(0):
        net({k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    out["lorakit (caches)"] = time.perf_counter() - t0
    sched = DDPMScheduler.from_config(parts["scheduler_config"])
    vae, te, tok = parts["vae"].to(device), parts["text_encoder"].to(device), parts["tokenizer"]
    opt = adamw([p for p in pf.parameters() if p.requires_grad], lr=1e-4)
    t0 = time.perf_counter()
    plain = build_dataset(DatasetArgs(**args, cache_latents=False), batch_size=BATCH, seed=0)
    for b in plain.epoch(0):
        with torch.no_grad():
            latents = vae.encode(b["pixels"].to(device)).latent_dist.sample() * vae.config.scaling_factor
            ids = tok(b["captions"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            hidden = te(ids.input_ids.to(device), return_dict=False)[0]
        recipe_loss(pf, sched, latents, hidden).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    out["diffusers way"] = time.perf_counter() - t0
    out["steps"] = len(cached)
    return out


def main():
    parsed = step_benchmark_args(candidates)
    if parsed is None:
        return
    a, device = parsed
    print(header(a.rounds, a.steps, RANK, f", {a.device}, SD1-shaped U-Net 64/128/256, 32x32 latents, batch {BATCH}"))
    steps, _ = candidates(device)
    med, per = timed_rounds(steps, device, a.rounds, a.steps)
    print("\n| step | ms | vs floor (paired) |\n|---|---|---|")
    for name in ("floor", "lorakit", "peft"):
        print(f"| {name} | {med[name]:.1f} | {paired(per, name, 'floor')} |")
    lk, pf = med["lorakit"] / med["floor"] - 1, med["peft"] / med["floor"] - 1
    print(f"\noverhead over floor: lorakit {100 * lk:.1f} %, PEFT recipe {100 * pf:.1f} % "
          f"(goal: lorakit <= half of PEFT's: {'met' if lk <= pf / 2 else 'NOT met'})")
    with tempfile.TemporaryDirectory() as tmp:
        ep = epoch_times(device, Path(tmp))
    ratio = ep["lorakit (caches)"] / ep["diffusers way"]
    print(f"\n| epoch ({ep['steps']} steps) | s |\n|---|---|\n| lorakit (caches) | {ep['lorakit (caches)']:.2f} |\n"
          f"| diffusers way | {ep['diffusers way']:.2f} |\nratio {ratio:.2f} (goal <= 0.5: "
          f"{'met' if ratio <= 0.5 else 'NOT met'})")
    peaks = candidate_peaks(__file__, candidates, device)
    print(f"\npeak memory of 3 steps: lorakit {peaks['lorakit'] / 2**20:.0f} MiB, PEFT recipe "
          f"{peaks['peft'] / 2**20:.0f} MiB (goal lorakit <= recipe: "
          f"{'met' if peaks['lorakit'] <= peaks['peft'] else 'NOT met'})")


if __name__ == "__main__":
    main()
