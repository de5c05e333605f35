"""A1111 sampler names and schedule types -> diffusers scheduler classes and options."""

import pytest
from diffusers import EulerDiscreteScheduler

from lorakit.sd.samplers import make_scheduler, split_name

BASE = EulerDiscreteScheduler(prediction_type="v_prediction").config


@pytest.mark.parametrize(("name", "schedule", "cls", "options"), [
    ("DPM++ 2M", "Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True,
                                                           "algorithm_type": "dpmsolver++"}),
    ("DPM++ 2M SDE Karras", None, "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++",
                                                                  "use_karras_sigmas": True}),
    ("Euler a", None, "EulerAncestralDiscreteScheduler", {}),
    ("euler_a", None, "EulerAncestralDiscreteScheduler", {}),
    ("Euler", "Exponential", "EulerDiscreteScheduler", {"use_exponential_sigmas": True}),
    ("DPM++ SDE", None, "DPMSolverSinglestepScheduler", {}),
    ("DDIM", "sgm_uniform", "DDIMScheduler", {"timestep_spacing": "trailing"}),
    ("dpmsolver++", None, "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
])
def test_sampler_table(name, schedule, cls, options):
    s = make_scheduler(BASE, name, schedule)
    assert type(s).__name__ == cls
    assert s.config.prediction_type == "v_prediction"  # the model's prediction type carries over
    for k, v in options.items():
        assert s.config[k] == v


def test_errors():
    with pytest.raises(ValueError, match="Closest: Euler a"):
        split_name("Euler b")
    with pytest.raises(ValueError, match="unknown schedule type"):
        split_name("Euler", "Wiggly")
    with pytest.raises(ValueError, match="does not support schedule type 'Karras'"):
        make_scheduler(BASE, "DDIM", "Karras")


@pytest.mark.parametrize("name", ["DDIM", "ddim"])
def test_ddim_does_not_clip_latents_unless_the_model_says_so(name):
    # SD 1.5's file says clip_sample: false; a config without the key must not get diffusers' default
    # (True), which clips the predicted x0 to [-1, 1] in latent space
    assert "clip_sample" not in BASE
    assert make_scheduler(BASE, name).config.clip_sample is False
    assert make_scheduler({**BASE, "clip_sample": True}, name).config.clip_sample is True
