"""The FLUX.1 / SD3 keys of ``sd.yaml`` (kohya's names), mixed into the ``train`` and ``network``
sections, and the checks that depend on the model family::

    model:   {path: models/flux1-dev, family: flux1}
    network: {dim: 16, alpha: 16, train_unet_only: true, train_blocks: single}
    train:   {timestep_sampling: shift, discrete_flow_shift: 3.1582, model_prediction_type: raw,
              guidance_scale: 1.0, gradient_checkpointing: true}

The SD-only keys (min-SNR, zero-terminal SNR, timestep bounds, clip_skip, block lr weights, conv
ranks) are refused for flux1/sd3 and these keys for sd1/sd2/sdxl, each with a one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from .flow import WEIGHTINGS

DIT = ("flux1", "sd3")


@dataclass
class FlowTrainArgs:
    """Flow-matching keys of the ``train`` section (FLUX.1 and SD3 only)."""

    timestep_sampling: Literal["sigma", "uniform", "sigmoid", "shift", "flux_shift", "logit_normal", "mode"] = "sigma"
    """How σ is drawn (``flow`` module): kohya's ``sigma``/``uniform``/``sigmoid``/``shift``/``flux_shift``, and
    the SD3 paper's ``logit_normal``/``mode`` densities (kohya: ``sigma`` with ``weighting_scheme`` set to them)."""
    sigmoid_scale: float = 1.0
    """``sigmoid``/``shift``/``flux_shift``: σ = sigmoid(scale·N(0, 1))."""
    discrete_flow_shift: float = 3.0
    """S of ``shift`` and of the sigma table (``sigma``/``logit_normal``/``mode``); kohya suggests 3.1582 for FLUX.1."""
    logit_mean: float = 0.0
    """``logit_normal``: σ-table index from sigmoid(N(logit_mean, logit_std))."""
    logit_std: float = 1.0
    """``logit_normal``: the normal's standard deviation."""
    mode_scale: float = 1.29
    """``mode``: c of the SD3 paper's mode density u' = 1 − u − c·(cos²(πu/2) − 1 + u)."""
    weighting_scheme: str = "none"
    """Per-sample loss weight: ``none``, ``sigma_sqrt`` (σ⁻²) or ``cosmap`` (2/(π(1−2σ+2σ²)))."""
    model_prediction_type: Literal["auto", "raw", "sigma_scaled"] = "auto"
    """``raw``: loss on the velocity ε − x0 (FLUX.1's default); ``sigma_scaled``: on the x0 estimate
    x_σ − σ·pred against x0 (SD3's default, kohya's and diffusers' SD3 trainers)."""
    guidance_scale: float = 1.0
    """FLUX.1 dev's distilled-guidance input during training (1.0 as kohya recommends; ignored for schnell)."""
    t5xxl_max_token_length: int | None = None
    """T5 tokens (default: FLUX.1 dev 512, schnell 256, SD3 256)."""
    apply_t5_attn_mask: bool = False
    """Pass T5's padding mask into T5 (and, for FLUX.1, into the transformer's attention)."""
    apply_lg_attn_mask: bool = False
    """SD3: pass CLIP-L/G's padding masks into the CLIP encoders."""
    save_format: Literal["kohya", "peft", "comfy"] = "kohya"
    """Saved files' keys: kohya (``lora_unet_`` over the original fused layout, what kohya and Forge write),
    ``peft`` (diffusers' ``transformer.`` keys with ``lora_adapter_metadata``) or ``comfy`` (``diffusion_model.``)."""
    blocks_to_swap: int = 0
    """Keep this many transformer blocks' frozen weights in CPU memory, each moved to the GPU just before it
    runs (kohya ``--blocks_to_swap``; CUDA only)."""


@dataclass
class DitNetworkArgs:
    """FLUX.1 / SD3 keys of the ``network`` section (kohya's ``network_args``)."""

    train_blocks: Literal["all", "double", "single"] = "all"
    """FLUX.1: adapt the double blocks, the single blocks or both."""
    train_double_block_indices: str | list[int] | None = None
    """FLUX.1: only these double blocks ("0-3,10", "all", "none", or a list of indices)."""
    train_single_block_indices: str | list[int] | None = None
    """FLUX.1: only these single blocks."""
    train_block_indices: str | list[int] | None = None
    """SD3: only these joint blocks."""
    split_qkv: bool = False
    """False (kohya's default): q, k and v (and FLUX.1's single-block MLP input) share one LoRA down
    factor, the fused ``qkv``/``linear1`` LoRA of the original checkpoints; True: one LoRA each."""
    train_t5xxl: bool = False
    """Also put LoRAs on T5 (kohya ``train_t5xxl``); only CLIP gets them otherwise."""
    quantize: Literal["none", "nf4", "fp4"] = "none"
    """QLoRA (Dettmers et al. 2023): keep the frozen transformer's Linear weights in 4 bits (``lorakit.quant``,
    dequantised to ``model.dtype`` per matmul); the adapters train in fp32 on top."""


def parse_blocks(spec, total: int, key: str, errors: list[str]) -> set[int] | None:
    """Block indices of kohya's selection syntax ("all", "none", "0-3,10") or a list; None = all."""
    if spec is None or spec == "all":
        return None
    if isinstance(spec, list):
        out = set(spec)
    elif spec in ("none", ""):
        return set()
    else:
        out = set()
        for part in str(spec).split(","):
            lo, _, hi = part.strip().partition("-")
            try:
                a, b = int(lo), int(hi) if hi else int(lo)
            except ValueError:
                errors.append(f"network.{key}={spec!r}: expected indices and ranges such as '0-3,10', 'all' or 'none'.")
                return None
            out.update(range(a, b + 1))
    bad = sorted(i for i in out if not 0 <= i < total)
    if bad:
        errors.append(f"network.{key}={spec!r}: indices {bad} are outside this model's 0-{total - 1}.")
    return out


def flow_problems(cfg) -> list[str]:
    """Value problems of the flow keys, whatever the family."""
    t, e = cfg.train, []
    if t.weighting_scheme in ("logit_normal", "mode"):
        e.append(f"train.weighting_scheme={t.weighting_scheme!r} is a σ density in kohya; in lorakit set "
                 f"train.timestep_sampling: {t.weighting_scheme} (weighting_scheme is the loss weight: {WEIGHTINGS}).")
    elif t.weighting_scheme == "uniform":
        e.append("train.weighting_scheme='uniform' is kohya's name for no weight; write 'none'.")
    elif t.weighting_scheme not in WEIGHTINGS:
        e.append(f"train.weighting_scheme={t.weighting_scheme!r}: expected one of {WEIGHTINGS}.")
    for key in ("sigmoid_scale", "discrete_flow_shift", "logit_std", "mode_scale"):
        if getattr(t, key) <= 0:
            e.append(f"train.{key}={getattr(t, key)}: expected a positive number.")
    if t.guidance_scale < 0:
        e.append(f"train.guidance_scale={t.guidance_scale}: expected a number >= 0 (1.0 to train FLUX.1 dev).")
    if t.t5xxl_max_token_length is not None and t.t5xxl_max_token_length < 1:
        e.append(f"train.t5xxl_max_token_length={t.t5xxl_max_token_length}: expected a positive integer or null.")
    if t.blocks_to_swap < 0:
        e.append(f"train.blocks_to_swap={t.blocks_to_swap}: expected an integer >= 0.")
    return e


#: reason -> the SD-only keys it refuses for a flow-matching model
_SD_ONLY = {
    "min-SNR and debiased weights are for DDPM timesteps; use train.weighting_scheme":
        ("train.min_snr_gamma", "train.debiased_estimation_loss"),
    "it rescales a DDPM schedule; flow matching reaches pure noise at σ = 1": ("train.zero_terminal_snr",),
    "σ comes from train.timestep_sampling": ("train.min_timestep", "train.max_timestep"),
    "the text encoders' layers are fixed by the model": ("train.clip_skip",),
    "CLIP reads 77 tokens; set train.t5xxl_max_token_length for T5": ("train.max_token_length",),
    "these models predict the velocity; see train.model_prediction_type": ("model.prediction_type",),
    "the transformer blocks have no convolutions": ("network.conv_dim",),
    "it names U-Net blocks; choose transformer blocks with network.train_blocks":
        ("network.down_lr_weight", "network.mid_lr_weight", "network.up_lr_weight"),
}
SD_ONLY = {tuple(key.split(".")): why for why, keys in _SD_ONLY.items() for key in keys}
FLUX_ONLY = {("network", "train_blocks"), ("network", "train_double_block_indices"),
             ("network", "train_single_block_indices")}
SD3_ONLY = {("network", "train_block_indices"), ("train", "apply_lg_attn_mask"), ("model", "drop_t5")}


def _changed(section, cls, names=None) -> list[str]:
    default = cls()
    return [f.name for f in fields(cls) if (names is None or f.name in names)
            and getattr(section, f.name) != getattr(default, f.name)]


def family_problems(cfg, family: str) -> list[str]:
    """Keys set for a family they do not apply to (``family`` as detected or configured)."""
    from .config import NetworkArgs, SDModelArgs, SDTrainArgs

    classes = {"train": SDTrainArgs, "network": NetworkArgs, "model": SDModelArgs}
    e = []
    if family in DIT:
        for (sec, key), why in SD_ONLY.items():
            if key in _changed(getattr(cfg, sec), classes[sec], {key}):
                e.append(f"{sec}.{key} does not apply to {family} (flow matching): {why}.")
        other = SD3_ONLY if family == "flux1" else FLUX_ONLY
        for sec, key in sorted(other):
            if key in _changed(getattr(cfg, sec), classes[sec], {key}):
                e.append(f"{sec}.{key} is {'an SD3' if family == 'flux1' else 'a FLUX.1'} key; this is a {family} model.")
        if family == "sd3" and cfg.train.guidance_scale != 1.0:
            e.append("train.guidance_scale: SD3 has no distilled-guidance input (it is FLUX.1 dev's); remove it.")
        if cfg.model.drop_t5 and cfg.network.train_t5xxl:
            e.append("network.train_t5xxl with model.drop_t5: there is no T5 to adapt; drop one of them.")
        return e
    flow = _changed(cfg.train, SDTrainArgs, {f.name for f in fields(FlowTrainArgs)})
    dit = _changed(cfg.network, NetworkArgs, {f.name for f in fields(DitNetworkArgs)})
    e += [f"train.{k} applies to flux1/sd3 (flow matching); {family} trains with DDPM timesteps." for k in flow]
    e += [f"network.{k} applies to flux1/sd3 transformers; {family} has a U-Net." for k in dit]
    if cfg.model.drop_t5:
        e.append(f"model.drop_t5 applies to sd3; {family} has no T5.")
    return e
