"""The step's math against diffusers and the published formulas: schedules, zero-terminal SNR, targets,
SNR weights, noise additions, losses, block learning rates and parameter groups."""

import math
from types import SimpleNamespace

import pytest
import torch

from lorakit.tasks.diffusion.config import NetworkArgs, SDTrainArgs
from lorakit.tasks.diffusion.network import block_index, block_weights, preset_weights
from lorakit.tasks.diffusion.noise import (
    Schedule,
    draw_noise,
    draw_timesteps,
    elementwise_loss,
    pyramid_noise,
    snr_weights,
)

SD = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedule_matches_diffusers_ddpm(kind):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(**{**SD, "beta_schedule": kind})
    ours = Schedule({**SD, "beta_schedule": kind})
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod)
    x0, eps, t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2), torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, eps, t), ref.add_noise(x0, eps, t))
    torch.testing.assert_close(ours.target(x0, eps, t, "v_prediction"), ref.get_velocity(x0, eps, t))


def test_zero_terminal_snr_matches_diffusers():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(**SD, rescale_betas_zero_snr=True)
    ours = Schedule(SD, zero_snr=True)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod)
    assert float(ours.alphas_cumprod[-1]) < 1e-6 and float(ours.snr(torch.tensor([999]))) < 1e-6


def test_snr_weights_follow_min_snr_and_debiased_formulas():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    t = torch.tensor([1, 50, 400, 900])
    s = Schedule(SD)
    snr = s.snr(t)
    torch.testing.assert_close(snr, compute_snr(DDPMScheduler(**SD), t))
    torch.testing.assert_close(snr_weights(snr, "epsilon", 5.0, False), torch.clamp(snr, max=5) / snr)
    torch.testing.assert_close(snr_weights(snr, "v_prediction", 5.0, False), torch.clamp(snr, max=5) / (snr + 1))
    torch.testing.assert_close(snr_weights(snr, "epsilon", None, True), 1 / torch.clamp(snr, max=1000).sqrt())
    torch.testing.assert_close(snr_weights(snr, "v_prediction", None, True), 1 / (torch.clamp(snr, max=1000) + 1))
    assert torch.equal(snr_weights(snr, "epsilon", None, False), torch.ones(4))


def test_losses():
    p, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(elementwise_loss(p, t, "l2", 0.1), ((p - t) ** 2).mean((1, 2, 3)))
    torch.testing.assert_close(elementwise_loss(p, t, "l1", 0.1), (p - t).abs().mean((1, 2, 3)))
    c = 0.3
    huber = 2 * c * (torch.sqrt((p - t) ** 2 + c * c) - c)
    torch.testing.assert_close(elementwise_loss(p, t, "huber", c), huber.mean((1, 2, 3)))


def _args(**kw):
    base = dict(noise_offset=0.0, noise_offset_random_strength=False, adaptive_noise_scale=None,
                multires_noise_iterations=0, multires_noise_discount=0.3, min_timestep=0, max_timestep=None)
    return SimpleNamespace(**{**base, **kw})


def test_noise_offset_adds_a_per_channel_constant():
    lat = torch.randn(2, 4, 8, 8)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    plain = draw_noise(lat, _args(), g1)
    offset = draw_noise(lat, _args(noise_offset=0.1), g2)
    diff = offset - plain
    torch.testing.assert_close(diff, diff[:, :, :1, :1].expand_as(diff))
    assert diff.abs().max() > 0
    adaptive = draw_noise(lat, _args(noise_offset=0.1, adaptive_noise_scale=0.5), torch.Generator().manual_seed(0))
    expected = (0.1 + 0.5 * lat.mean((2, 3), keepdim=True).abs()).clamp(min=0)
    torch.testing.assert_close((adaptive - plain) / diff * 0.1, expected.expand_as(diff), rtol=1e-4, atol=1e-5)


def test_pyramid_noise_is_normalised_and_timesteps_stay_in_range():
    n = pyramid_noise(torch.randn(2, 4, 16, 16), 6, 0.3, torch.Generator().manual_seed(0))
    assert abs(float(n.std()) - 1) < 1e-5
    t = draw_timesteps(1000, _args(min_timestep=100, max_timestep=200), 1000, "cpu")
    assert int(t.min()) >= 100 and int(t.max()) < 200


def test_block_weights_follow_kohya():
    assert block_index("down_blocks.0.attentions.1.proj_in", 12) == 2
    assert block_index("down_blocks.1.downsamplers.0.conv", 12) == 6
    assert block_index("mid_block.attentions.0.proj_in", 12) == 12
    assert block_index("up_blocks.0.resnets.2.conv1", 12) == 15
    assert block_index("conv_in", 12) == -1
    w = preset_weights("sine", 12)
    assert w[0] == 0 and w[-1] == pytest.approx(1) and w[6] == pytest.approx(math.sin(math.pi * 6 / 11 / 2))
    assert preset_weights("zeros+.5", 3) == [0.5, 0.5, 0.5] and preset_weights([2.0], 3) == [2.0, 1.0, 1.0]
    from sd_models import tiny_unet

    unet = tiny_unet()
    weights = block_weights(NetworkArgs(down_lr_weight=[0.0, 0.5], mid_lr_weight=2.0), unet)
    assert weights["down_blocks.0.attentions.0.proj_in"] == 0.0 and weights["down_blocks.0.attentions.1"] == 0.5
    assert weights["mid_block.attentions.0"] == 2.0 and weights["up_blocks.1.attentions.0"] == 1.0


def test_param_groups_split_parts_blocks_and_loraplus(tmp_path):
    from sd_pipes import components

    from lorakit.tasks.diffusion.family import FAMILIES
    from lorakit.tasks.diffusion.network import add_network, param_groups

    comps = components(sdxl=False)
    net = NetworkArgs(dim=4, alpha=2, loraplus_lr_ratio=16, down_lr_weight=[0.0, 0.5] + [1.0] * 10)
    lrs = {"unet": 1e-3, "text_encoder": 1e-4}
    adapted = add_network(comps, net, FAMILIES["sd1"].text_parts, lrs)
    assert not any(n.startswith("down_blocks.0.attentions.0.") for n in adapted["unet"])  # weight 0: left out
    groups = param_groups(comps, net, lrs)
    by_lr = {g["lr"]: g for g in groups}
    assert set(by_lr) == {1e-3, 1.6e-2, 5e-4, 8e-3, 1e-4, 1.6e-3}
    b = {id(lay.adapters["default"].lora_B) for m in (comps["unet"], comps["text_encoder"])
         for lay in m.modules() if hasattr(lay, "adapters")}
    assert all(id(p) in b for p in by_lr[1.6e-2]["params"]) and all(id(p) not in b for p in by_lr[1e-3]["params"])
    assert SDTrainArgs().optimizer == "adamw"
