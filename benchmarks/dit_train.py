"""FLUX.1 LoRA training-step benchmark: lorakit's flow-matching step vs the frozen floor vs diffusers'
``train_dreambooth_lora_flux.py`` recipe with PEFT, in one process.

Model: a FLUX.1-shaped transformer at reduced size (FluxTransformer2DModel: 2 double + 4 single blocks,
width 256 = 4 heads x 64, T5 width 256, pooled 128, distilled-guidance input), 16-channel 32x32 latents
(256 packed image tokens, a 256x256 image) and 32 T5 tokens, batch 1; LoRA rank 16 (alpha 16) on kohya's
targets (every Linear in the double and single blocks). The recipe: ``transformer.add_adapter(peft.LoraConfig
(...))`` on the same modules, its step body (density, sigmas, packing, guidance, velocity target, weighted
MSE). lorakit: the task's ``DitNetwork`` step on cached latents and text states, ``split_qkv: true`` (one
factor pair per module, as PEFT has; the fused kohya layout is timed as an extra row). The floor is the
recipe's step on the frozen transformer (gradients reach the noisy input only). Fused AdamW for all.

    .venv/bin/python benchmarks/dit_train.py [--rounds 5 --steps 4] [--device cuda]
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from _common import candidate_peaks, header, paired, step_benchmark_args, timed_rounds
from train_step import make_step

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
RANK, BATCH, T5_TOKENS, WIDTH = 16, 1, 32, 256


def build_transformer():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4,
                                  attention_head_dim=64, num_attention_heads=WIDTH // 64, joint_attention_dim=256,
                                  pooled_projection_dim=128, axes_dims_rope=[16, 24, 24], guidance_embeds=True).eval()


def lorakit_net(transformer, device, split: bool):
    from lorakit.tasks.diffusion.config import NetworkArgs, SDTrainArgs
    from lorakit.tasks.diffusion.dit import FLUX1
    from lorakit.tasks.diffusion.dit_network import add_dit_network
    from lorakit.tasks.diffusion.dit_step import DitNetwork

    comps = {"transformer": transformer}
    add_dit_network(comps, FLUX1, NetworkArgs(dim=RANK, alpha=RANK, split_qkv=split, train_unet_only=True),
                    {"transformer": 1e-4})
    comps["transformer"].to(device)
    return DitNetwork(FLUX1, comps, SDTrainArgs(), "raw", T5_TOKENS)


def recipe_loss(transformer, sched, latents, t5, pooled):
    """diffusers' train_dreambooth_lora_flux.py step body (weighting_scheme none, guidance 1.0)."""
    from diffusers import FluxPipeline
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    b, c, h, w = latents.shape
    ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
    noise = torch.randn_like(latents)
    u = compute_density_for_timestep_sampling(weighting_scheme="none", batch_size=b, logit_mean=0.0, logit_std=1.0,
                                              mode_scale=1.29)
    timesteps = sched.timesteps[(u * sched.config.num_train_timesteps).long()].to(latents.device)
    sigmas = (timesteps / 1000).view(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
    guidance = torch.tensor([1.0], device=latents.device).expand(b)
    pred = transformer(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance, pooled_projections=pooled,
                       encoder_hidden_states=t5, txt_ids=torch.zeros(t5.shape[1], 3, device=latents.device),
                       img_ids=ids, return_dict=False)[0]
    pred = FluxPipeline._unpack_latents(pred, height=h * 8, width=w * 8, vae_scale_factor=8)
    weighting = compute_loss_weighting_for_sd3(weighting_scheme="none", sigmas=sigmas)
    target = noise - latents
    return torch.mean((weighting.float() * (pred.float() - target.float()) ** 2).reshape(b, -1), 1).mean()


def candidates(device):
    """(steps, models): floor, lorakit (split and fused q/k/v) and PEFT steps on the same cached batch."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from peft import LoraConfig

    from lorakit.model import lora_layers

    base = build_transformer()
    net = lorakit_net(copy.deepcopy(base), device, split=True)
    fused = lorakit_net(copy.deepcopy(base), device, split=False)
    targets = [n for n, _ in lora_layers(net.transformer)]
    pf = copy.deepcopy(base)
    pf.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=targets))
    pf.to(device)
    floor = copy.deepcopy(base).to(device).requires_grad_(False)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(BATCH, 16, 32, 32, generator=g).to(device)
    t5 = torch.randn(BATCH, T5_TOKENS, 256, generator=g).to(device)
    pooled = torch.randn(BATCH, 128, generator=g).to(device)
    batch = {"latents": latents, "te_t5": t5, "te_pooled": pooled, "te_t5_mask": torch.ones(BATCH, T5_TOKENS, device=device),
             "loss_weight": torch.ones(BATCH, device=device)}

    def floor_loss():
        return recipe_loss(floor, sched, latents.clone().requires_grad_(), t5, pooled)

    steps = {"floor": make_step(floor, floor_loss), "lorakit": make_step(net, lambda: net(batch)),
             "peft": make_step(pf, lambda: recipe_loss(pf, sched, latents, t5, pooled)),
             "lorakit fused qkv": make_step(fused, lambda: fused(batch))}
    return steps, {"lorakit": net, "peft": pf}


def main():
    parsed = step_benchmark_args(candidates)
    if parsed is None:
        return
    a, device = parsed
    print(header(a.rounds, a.steps, RANK, f", {a.device}, FLUX.1-shaped 2+4 blocks width {WIDTH}, 256 image + "
                                          f"{T5_TOKENS} text tokens, batch {BATCH}"))
    steps, models = candidates(device)
    n_params = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in models.items()}
    med, per = timed_rounds(steps, device, a.rounds, a.steps)
    print(f"\ntrainable parameters: lorakit {n_params['lorakit']:,}, PEFT {n_params['peft']:,}")
    print("\n| step | ms | vs floor (paired) |\n|---|---|---|")
    for name in ("floor", "lorakit", "peft", "lorakit fused qkv"):
        print(f"| {name} | {med[name]:.1f} | {paired(per, name, 'floor')} |")
    lk, pf = med["lorakit"] / med["floor"] - 1, med["peft"] / med["floor"] - 1
    print(f"\noverhead over floor: lorakit {100 * lk:.1f} %, PEFT recipe {100 * pf:.1f} % "
          f"(goal: lorakit <= half of PEFT's: {'met' if lk <= pf / 2 else 'NOT met'})")
    peaks = candidate_peaks(__file__, candidates, device)
    print(f"\npeak memory of 3 steps: lorakit {peaks['lorakit'] / 2**20:.0f} MiB, PEFT recipe "
          f"{peaks['peft'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
