"""A1111 sampler names (and kohya's ``--ss`` names) -> diffusers schedulers, with schedule types.

Old A1111 names such as "DPM++ 2M Karras" are a sampler plus a schedule type. The scheduler is built
from the pipeline's original scheduler config, so betas and prediction type (v-prediction) carry over.
"""

from __future__ import annotations

import difflib
import inspect

# name -> (diffusers class, extra config)
SAMPLERS: dict[str, tuple[str, dict]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DPM solver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}
# schedule type -> config
SCHEDULES: dict[str, dict] = {
    "Automatic": {},
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {"timestep_spacing": "trailing"},
}
# kohya's sample_sampler names (train_util.SCHEDULER_NAMES) -> A1111 names
KOHYA = {"ddim": "DDIM", "pndm": "PLMS", "lms": "LMS", "k_lms": "LMS", "euler": "Euler", "k_euler": "Euler",
         "euler_a": "Euler a", "k_euler_a": "Euler a", "heun": "Heun", "dpm_2": "DPM2", "k_dpm_2": "DPM2",
         "dpm_2_a": "DPM2 a", "k_dpm_2_a": "DPM2 a", "dpmsolver": "DPM solver", "dpmsolver++": "DPM++ 2M",
         "dpmsingle": "DPM++ SDE"}
# sigma-based options only some schedulers accept
SIGMA_KEYS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def split_name(sampler: str, schedule: str | None = None) -> tuple[str, str]:
    """(A1111 sampler, schedule type) from any accepted spelling; unknown -> error with the closest names."""
    if sampler in KOHYA:
        sampler = KOHYA[sampler]
    for sched in SCHEDULES:  # "DPM++ 2M Karras" -> ("DPM++ 2M", "Karras")
        if sampler.endswith(" " + sched) and sampler[: -len(sched) - 1] in SAMPLERS:
            if schedule not in (None, "Automatic", sched):
                raise ValueError(f"sampler {sampler!r} names schedule {sched!r} but schedule={schedule!r} was given.")
            sampler, schedule = sampler[: -len(sched) - 1], sched
    if sampler not in SAMPLERS:
        known = list(SAMPLERS) + list(KOHYA)
        close = difflib.get_close_matches(sampler, known, n=4, cutoff=0.3)
        raise ValueError(f"unknown sampler {sampler!r}. Closest: {', '.join(close) or 'none'}. "
                         f"A1111 names: {', '.join(SAMPLERS)} (kohya names work too).")
    schedule = schedule or "Automatic"
    match = {s.lower(): s for s in SCHEDULES}.get(schedule.lower().replace("_", " "))
    if match is None:
        raise ValueError(f"unknown schedule type {schedule!r}; expected one of {', '.join(SCHEDULES)}.")
    return sampler, match


def check_sampler(sampler: str, schedule: str | None = None) -> tuple[str, str]:
    """(A1111 sampler, schedule type) once both names are known and the sampler's scheduler supports the
    schedule type; a ValueError naming the problem otherwise (``validate`` checks prompt files with it)."""
    sampler, schedule = split_name(sampler, schedule)
    options = SCHEDULES[schedule]
    if options:  # only then is diffusers imported (seconds): the names alone decide the rest
        cls_name = SAMPLERS[sampler][0]
        missing = [k for k in options if k not in _accepted(cls_name)]
        if missing:
            raise ValueError(f"sampler {sampler!r} does not support schedule type {schedule!r} "
                             f"({cls_name} has no {missing[0]}).")
    return sampler, schedule


def _accepted(cls_name: str) -> set[str]:
    import diffusers

    return set(inspect.signature(getattr(diffusers, cls_name).__init__).parameters)


def make_scheduler(base_config, sampler: str = "Euler a", schedule: str | None = None):
    """A diffusers scheduler for an A1111 sampler + schedule type, from ``base_config`` (the pipeline's)."""
    import diffusers

    sampler, schedule = check_sampler(sampler, schedule)
    cls_name, extra = SAMPLERS[sampler]
    cls = getattr(diffusers, cls_name)
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    for key in SIGMA_KEYS:
        config.pop(key, None)
    config.update(extra)
    config.update(SCHEDULES[schedule])
    accepted = _accepted(cls_name)
    if "clip_sample" in accepted:  # SD latents are not in [-1, 1]: clipping x0 there ruins DDIM's images
        config.setdefault("clip_sample", False)
    return cls.from_config(config)
