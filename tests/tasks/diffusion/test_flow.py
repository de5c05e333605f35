"""The flow-matching math against diffusers (scheduler sigmas, SD3 densities and weights, FLUX.1
packing and position ids) and the published formulas (kohya's sigmoid/shift/flux_shift samplers)."""

import math
from types import SimpleNamespace

import pytest
import torch

from lorakit.tasks.diffusion import flow


def _args(**kw):
    base = dict(timestep_sampling="sigma", sigmoid_scale=1.0, discrete_flow_shift=3.0, logit_mean=0.0,
                logit_std=1.0, mode_scale=1.29)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("shift", [1.0, 3.0, 3.1582])
def test_sigma_table_is_the_flow_match_schedulers(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    assert torch.equal(flow.sigma_table(shift), ref.sigmas[:1000])
    assert torch.equal(flow.sigma_table(shift) * 1000, ref.timesteps)


@pytest.mark.parametrize("kind", ["sigma", "logit_normal", "mode"])
def test_table_samplers_follow_diffusers_density_and_index(kind):
    """u from diffusers' ``compute_density_for_timestep_sampling`` (same generator state), index
    ⌊1000·u⌋ into the scheduler's sigmas: the SD3/FLUX.1 scripts' σ."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=2.0)
    args = _args(timestep_sampling=kind, discrete_flow_shift=2.0, logit_mean=0.3, logit_std=0.8, mode_scale=1.29)
    ours = flow.draw_sigmas(4096, args, 256, generator=torch.Generator().manual_seed(1))
    u = compute_density_for_timestep_sampling("none" if kind == "sigma" else kind, 4096, logit_mean=0.3,
                                              logit_std=0.8, mode_scale=1.29, generator=torch.Generator().manual_seed(1))
    idx = (u * 1000).long().clamp(max=999)
    torch.testing.assert_close(ours, sched.sigmas[idx], rtol=0, atol=0)
    assert float(ours.min()) > 0 and float(ours.max()) <= 1


def test_kohya_samplers_follow_their_formulas():
    n, g = 20000, lambda: torch.Generator().manual_seed(4)
    z = torch.randn(n, generator=g())
    s = torch.sigmoid(1.5 * z)
    got = {k: flow.draw_sigmas(n, _args(timestep_sampling=k, sigmoid_scale=1.5, discrete_flow_shift=3.1582), 1024,
                               generator=g()) for k in ("sigmoid", "shift", "flux_shift")}
    torch.testing.assert_close(got["sigmoid"], s)
    torch.testing.assert_close(got["shift"], 3.1582 * s / (1 + 2.1582 * s))
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (1024 - 256)  # kohya's get_lin_function(256, 0.5, 4096, 1.15)
    torch.testing.assert_close(got["flux_shift"], math.exp(mu) / (math.exp(mu) + (1 / s - 1)))
    uniform = flow.draw_sigmas(n, _args(timestep_sampling="uniform"), 1024, generator=g())
    assert abs(float(uniform.mean()) - 0.5) < 0.01 and float(uniform.min()) >= 0
    assert float(got["shift"].mean()) > float(got["sigmoid"].mean()) + 0.1  # the shift favours noisy σ


def test_flux_shift_grows_with_resolution():
    args = _args(timestep_sampling="flux_shift")
    small = flow.draw_sigmas(4000, args, 256, generator=torch.Generator().manual_seed(0))
    big = flow.draw_sigmas(4000, args, 4096, generator=torch.Generator().manual_seed(0))
    assert bool((big >= small).all()) and float(big.mean()) > float(small.mean()) + 0.05


def test_loss_weights_are_diffusers_sd3_weights():
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    sigma = torch.tensor([0.05, 0.3, 0.5, 0.97])
    for kind in ("none", "sigma_sqrt", "cosmap"):
        torch.testing.assert_close(flow.loss_weights(kind, sigma), compute_loss_weighting_for_sd3(kind, sigma))
    with pytest.raises(ValueError, match="weighting_scheme='logit_normal'"):
        flow.loss_weights("logit_normal", sigma)


def test_noisy_input_targets_and_the_x0_estimate():
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    sigma = torch.tensor([0.0, 0.5, 1.0])
    xt = flow.noisy_input(x0, eps, sigma)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[2], eps[2])
    v = eps - x0
    pred, target = flow.prediction_and_target(v, x0, eps, xt, sigma, "raw")
    torch.testing.assert_close(target, v)
    est, target = flow.prediction_and_target(v, x0, eps, xt, sigma, "sigma_scaled")  # the true velocity gives x0
    torch.testing.assert_close(est, x0)
    torch.testing.assert_close(target, x0)


def test_packing_and_ids_match_the_flux_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 16, 6, 10)
    packed = flow.pack_latents(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 16, 6, 10), rtol=0, atol=0)
    torch.testing.assert_close(flow.unpack_latents(packed, 6, 10), x, rtol=0, atol=0)
    torch.testing.assert_close(FluxPipeline._unpack_latents(packed, 48, 80, 8), x, rtol=0, atol=0)
    torch.testing.assert_close(flow.image_ids(6, 10), FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu",
                                                                                            torch.float32))
