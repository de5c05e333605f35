"""The ``sd.yaml`` config of the diffusion task: ``model``, ``data`` (kohya keys, see ``dataset``),
``network``, ``train`` (the shared ``TrainArgs`` plus kohya's SD keys) and ``sample``.

    task: diffusion
    model:   {path: models/sd15, family: auto, prediction_type: auto}
    data:    {train_data_dir: data/img, resolution: 512, cache_latents: true}
    network: {module: lora, dim: 16, alpha: 8, conv_dim: null}
    train:   {output_dir: runs/sd, output_name: mylora, epochs: 10, lr: 1e-4, optimizer: adamw}
    sample:  {prompts: prompts.txt, every_n_epochs: 1}

Key names follow kohya's ``train_network.py`` flags, so a kohya command line maps one to one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ...config import ConfigError
from ...sd.sample_prompts import prompt_problems
from ...sd.samplers import check_sampler
from ...train.checks import (
    adapter_not_model,
    blocking_file,
    device_kind,
    device_problems,
    distributed_problems,
    nested,
)
from ...train.config import TrainArgs, parse_section, train_problems, unknown_sections
from ...train.optim import optimizer_problems
from .dataset import DatasetArgs
from .dataset import problems as data_problems
from .dataset.cache import default_cache_dir
from .dataset.layout import dataset_dirs
from .dit_config import DitNetworkArgs, FlowTrainArgs, family_problems, flow_problems

FAMILIES = ("auto", "sd1", "sd2", "sd2-v", "sdxl", "flux1", "sd3")
BLOCK_PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


@dataclass
class SDModelArgs:
    path: str = ""
    """A local diffusers pipeline directory, or a single-file ``.safetensors`` checkpoint (then ``config``)."""
    config: str | None = None
    """Local diffusers config directory for a single-file checkpoint (nothing is downloaded)."""
    family: Literal["auto", "sd1", "sd2", "sd2-v", "sdxl", "flux1", "sd3"] = "auto"
    """``auto`` reads it from the model: FluxPipeline / StableDiffusion3Pipeline, else the U-Net config
    (text_time embeddings: SDXL; 1024-wide context: SD2)."""
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = "auto"
    """``auto``: the scheduler config's ``prediction_type`` (``sd2-v`` forces v_prediction)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the frozen U-Net and text encoders; the VAE always runs in float32 (no NaN/black images)."""
    device: str = "auto"
    """``auto`` (cuda when available, else cpu), ``cpu`` or ``cuda``."""
    drop_t5: bool = False
    """SD3: do not load T5 (its states are zeros, as SD3 pipelines run without ``text_encoder_3``)."""


@dataclass
class NetworkArgs(DitNetworkArgs):
    module: Literal["lora", "dora", "loha", "lokr"] = "lora"
    """``lora`` is written in kohya's format; ``dora``/``loha``/``lokr`` in LyCORIS's (A1111/ComfyUI load both)."""
    dim: int = 16
    """Rank of every Linear and 1x1-conv module (kohya ``network_dim``)."""
    alpha: float = 8.0
    """Scale = alpha/dim (kohya ``network_alpha``)."""
    conv_dim: int | None = None
    """Rank of the ResNet/Down/Upsample 3x3 convs (LoCon); ``None`` leaves them out."""
    conv_alpha: float | None = None
    """Alpha of the 3x3 convs. Unset: 1.0 for ``module: lora`` (kohya's ``networks/lora.py``), the network
    ``alpha`` for dora/loha/lokr (LyCORIS' ``create_network``), so a kohya command line trains the same scale."""
    dropout: float = 0.0
    """Dropout on each module's input during training (kohya ``network_dropout``)."""
    rank_dropout: float = 0.0
    """Zero each rank per sample with this probability during training (kohya, plain LoRA only)."""
    module_dropout: float = 0.0
    """Skip a whole module with this probability per step during training (kohya, plain LoRA only)."""
    train_unet_only: bool = False
    """Only the U-Net gets adapters (kohya ``network_train_unet_only``); needed to cache text-encoder outputs."""
    loraplus_lr_ratio: float | None = None
    """LoRA+ (Hayou et al. 2024): up/B weights learn ``ratio`` times faster."""
    down_lr_weight: list[float] | str | None = None
    """Per down block lr multipliers (12 for SD1/2, 9 for SDXL) or a preset: cosine, sine, linear,
    reverse_linear, zeros; a weight of 0 leaves that block's modules out."""
    mid_lr_weight: float | None = None
    """lr multiplier of the mid block (0 leaves its modules out)."""
    up_lr_weight: list[float] | str | None = None
    """Per up block lr multipliers or a preset, as ``down_lr_weight``."""
    network_weights: str | None = None
    """Start from this LoRA file (kohya ``network_weights``): same family, targets, module and dim."""


@dataclass
class SDTrainArgs(FlowTrainArgs, TrainArgs):
    output_dir: str = "runs/sd"
    output_name: str = "lora"
    """Files are ``<output_name>-000001.safetensors`` per saved epoch and ``<output_name>.safetensors`` at the end."""
    epochs: float = 10.0
    batch_size: int = 1
    lr: float = 1e-4
    unet_lr: float | None = None
    """U-Net learning rate (default ``lr``; 0 freezes the U-Net's adapters)."""
    text_encoder_lr: float | None = None
    """Text-encoder learning rate (default ``lr``; 0 freezes them)."""
    optimizer: str = "adamw"
    """adamw, adamw8bit, lion, prodigy, adafactor, or any importable class (``torch.optim.SGD``)."""
    optimizer_args: dict = field(default_factory=dict)
    """Extra keyword arguments of the optimizer (e.g. ``{d_coef: 2}`` for Prodigy)."""
    scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                       "polynomial"] = "constant"
    warmup_steps: int | float = 0
    """Warm-up optimizer steps, or a fraction of the total when below 1 (kohya ``lr_warmup_steps``)."""
    power: float = 1.0
    """``polynomial``: the decay exponent (kohya ``lr_scheduler_power``)."""
    save_every_n_epochs: int | None = 1
    """Save ``<output_name>-NNNNNN.safetensors`` (and a resumable checkpoint) every N epochs; ``null``: off."""
    save_every_n_steps: int | None = None
    """Also save every N optimizer steps (``<output_name>-stepNNNNNNNN.safetensors``; at an epoch's end the epoch's name); ``null``: off."""
    keep_last: int | None = None
    """Saved LoRA files and checkpoints kept (kohya ``save_last_n_epochs``); ``None`` keeps all."""
    save_precision: Literal["fp16", "bf16", "fp32", "float"] = "fp16"
    """Dtype of the saved LoRA files (``float`` = fp32, kohya's name)."""
    log_every: int = 1
    noise_offset: float = 0.0
    """``noise += offset·randn(B, C, 1, 1)`` (Guttenberg 2023): darker darks, brighter brights."""
    noise_offset_random_strength: bool = False
    """Use ``rand()·noise_offset`` per sample."""
    adaptive_noise_scale: float | None = None
    """Adds ``scale·|mean(latents)|`` per channel to the offset (kohya)."""
    multires_noise_iterations: int = 0
    """Pyramid noise levels (Whitaker 2023); 6-10 is typical."""
    multires_noise_discount: float = 0.3
    """Weight of each coarser pyramid level (kohya's default 0.3)."""
    ip_noise_gamma: float = 0.0
    """Input perturbation (Ning et al. 2023): the noisy input gets ``noise + γ·randn``, the target stays ``noise``."""
    ip_noise_gamma_random_strength: bool = False
    """Use ``rand()·ip_noise_gamma`` per sample."""
    min_snr_gamma: float | None = None
    """min-SNR-γ weighting (Hang et al. 2023): ``min(snr, γ)/snr`` (ε) or ``/(snr+1)`` (v); 5 is common."""
    debiased_estimation_loss: bool = False
    """Weight ``1/sqrt(snr)`` (ε) or ``1/(snr+1)`` (v), snr capped at 1000 (Yu et al. 2024)."""
    zero_terminal_snr: bool = False
    """Rescale the betas so the last timestep is pure noise (Lin et al. 2024); use with v-prediction."""
    loss_type: Literal["l2", "l1", "huber", "smooth_l1"] = "l2"
    """Element-wise loss between prediction and target (kohya's names)."""
    huber_c: float = 0.1
    """``huber``: 2c·(sqrt(d² + c²) − c); ``smooth_l1``: torch's smooth L1 with beta = c."""
    min_timestep: int = 0
    """Smallest timestep drawn (see ``max_timestep``)."""
    max_timestep: int | None = None
    """Timesteps are drawn uniformly from ``[min_timestep, max_timestep)`` (default: all)."""
    clip_skip: int | None = None
    """SD1/2: use the text encoder's ``clip_skip``-th last layer (2 for many anime models)."""
    max_token_length: Literal[75, 150, 225] | None = None
    """Prompts longer than 75 tokens in 75-token chunks (kohya: 150 or 225)."""


@dataclass
class SampleArgs:
    prompts: str | None = None
    """A kohya prompt file (``prompt --n negative --w 512 --h 512 --s 30 --l 7.5 --d seed`` per line;
    ``.txt``, ``.toml``, ``.json``); ``None`` turns sampling off."""
    every_n_epochs: int | None = 1
    """Sample every N epochs; ``null``: off."""
    every_n_steps: int | None = None
    """Also sample every N optimizer steps; ``null``: off."""
    before_training: bool = False
    """Also sample once before the first step (the base model's images, for comparison)."""
    sampler: str | None = None
    """kohya's names: ddim, euler, euler_a, dpmsolver++, ... (the prompt's ``--ss`` overrides it); None: euler_a
    for SD, the flow-match Euler sampler for FLUX.1/SD3."""


SECTIONS = {"model": SDModelArgs, "data": DatasetArgs, "network": NetworkArgs, "train": SDTrainArgs,
            "sample": SampleArgs}


@dataclass
class SDRunConfig:
    model: SDModelArgs
    data: DatasetArgs
    network: NetworkArgs
    train: SDTrainArgs
    sample: SampleArgs
    task = "diffusion"

    def to_dict(self) -> dict:
        return {"task": "diffusion", **{name: asdict(getattr(self, name)) for name in SECTIONS}}


def _block_weights(name: str, value, e: list[str]) -> None:
    if isinstance(value, str) and value.split("+")[0] not in BLOCK_PRESETS:
        e.append(f"network.{name}={value!r}: expected a list of numbers or a preset among {BLOCK_PRESETS} "
                 "(optionally with +offset, e.g. 'cosine+.25').")
    if isinstance(value, list) and any(w < 0 for w in value):
        e.append(f"network.{name}={value}: block weights must be >= 0 (0 leaves the block out).")


def problems(cfg: SDRunConfig, check_paths: bool = True) -> list[str]:
    """Every value problem of the config (the dataset folders and the model are checked by ``validate``)."""
    m, n, t, s = cfg.model, cfg.network, cfg.train, cfg.sample
    e = (data_problems(cfg.data) + train_problems(t) + device_problems(m.device) + distributed_problems(t, m.device)
         + flow_problems(cfg))
    if m.family != "auto":
        e += family_problems(cfg, m.family)
    if not m.path:
        e.append("model.path: missing; set it to a local diffusers directory (with model_index.json) or a "
                 "single-file .safetensors checkpoint plus model.config.")
    elif check_paths and not Path(m.path).exists():
        e.append(f"model.path={m.path!r}: not found (paths are relative to the working directory).")
    elif check_paths and (adapter := adapter_not_model(m.path)):
        e.append(f"model.path={m.path!r} is {adapter}, not a model; set model.path to the base model (a diffusers "
                 "directory or a checkpoint) and network.network_weights to this file to continue training it.")
    elif check_paths and Path(m.path).is_file() and not m.config:
        e.append(f"model.path={m.path!r} is a single-file checkpoint; set model.config to a local diffusers config "
                 "directory of the same family (nothing is downloaded).")
    if check_paths and m.config and not Path(m.config).is_dir():
        e.append(f"model.config={m.config!r}: not a directory.")
    for key in ("dim", "conv_dim"):
        if getattr(n, key) is not None and getattr(n, key) < 1:
            e.append(f"network.{key}={getattr(n, key)}: expected a positive integer rank.")
    for key in ("dropout", "rank_dropout", "module_dropout"):
        if not 0 <= getattr(n, key) < 1:
            e.append(f"network.{key}={getattr(n, key)}: expected a probability in [0, 1).")
    if (n.rank_dropout or n.module_dropout) and n.module != "lora":
        e.append(f"network.rank_dropout/module_dropout are kohya's LoRA options; network.module={n.module!r} has none.")
    if n.loraplus_lr_ratio is not None and n.loraplus_lr_ratio <= 0:
        e.append(f"network.loraplus_lr_ratio={n.loraplus_lr_ratio}: expected a positive ratio such as 16.")
    for key in ("down_lr_weight", "up_lr_weight"):
        _block_weights(key, getattr(n, key), e)
    if t.loraplus_ratio is not None:
        e.append("train.loraplus_ratio: the diffusion task reads network.loraplus_lr_ratio (kohya's name); move it.")
    for key in ("unet_lr", "text_encoder_lr"):
        if getattr(t, key) is not None and getattr(t, key) < 0:
            e.append(f"train.{key}={getattr(t, key)}: expected a learning rate >= 0 (0 freezes that part).")
    if t.unet_lr == 0 and (n.train_unet_only or t.text_encoder_lr == 0):
        e.append("train.unet_lr=0 with nothing else to train; give the U-Net or the text encoders a learning rate.")
    if cfg.data.cache_text_encoder_outputs and not n.train_unet_only and t.text_encoder_lr != 0:
        e.append("data.cache_text_encoder_outputs needs frozen text encoders: set network.train_unet_only: true "
                 "(or train.text_encoder_lr: 0).")
    if t.warmup_steps < 0:
        e.append(f"train.warmup_steps={t.warmup_steps}: expected steps >= 0 or a fraction below 1.")
    for key in ("save_every_n_epochs", "save_every_n_steps", "max_timestep", "clip_skip"):
        if getattr(t, key) is not None and getattr(t, key) < 1:
            e.append(f"train.{key}={getattr(t, key)}: expected a positive integer or null.")
    hi = t.max_timestep if t.max_timestep is not None else 1000
    if not 0 <= t.min_timestep < hi:
        e.append(f"train.min_timestep={t.min_timestep}, max_timestep={t.max_timestep}: expected "
                 "0 <= min_timestep < max_timestep <= the scheduler's steps (1000).")
    for key in ("noise_offset", "ip_noise_gamma", "huber_c"):
        if getattr(t, key) < 0:
            e.append(f"train.{key}={getattr(t, key)}: expected a number >= 0.")
    if t.min_snr_gamma is not None and t.min_snr_gamma <= 0:
        e.append(f"train.min_snr_gamma={t.min_snr_gamma}: expected a positive number such as 5.")
    if t.mixed_precision == "fp16" and device_kind(m.device) == "cpu":
        e.append("train.mixed_precision='fp16' is not supported on CPU; use 'no' (fp32) or 'bf16'.")
    if n.network_weights and check_paths and not Path(n.network_weights).is_file():
        e.append(f"network.network_weights={n.network_weights!r}: file not found.")
    if n.network_weights and n.module != "lora":
        e.append("network.network_weights: only plain LoRA files can be continued (network.module: lora).")
    if s.prompts and check_paths and not Path(s.prompts).is_file():
        e.append(f"sample.prompts={s.prompts!r}: file not found.")
    elif s.prompts and check_paths:  # read as the trainer reads it: a file that passes here samples
        e += [f"sample.prompts: {p}" for p in prompt_problems(s.prompts)]
    if s.prompts and t.distributed == "fsdp":
        e.append("sample.prompts with train.distributed='fsdp': samples are drawn by rank 0 alone, which cannot run a "
                 "sharded U-Net; sample the saved LoRA files with `lorakit sd generate`, or use distributed: ddp.")
    e += [f"sample.sampler={s.sampler!r}: {p}" for p in _sampler_problem(s.sampler)] if s.sampler else []
    for key in ("every_n_epochs", "every_n_steps"):
        if getattr(s, key) is not None and getattr(s, key) < 1:
            e.append(f"sample.{key}={getattr(s, key)}: expected a positive integer or null.")
    return e + optimizer_problems(t) + (path_problems(cfg) if check_paths else [])


def path_problems(cfg: SDRunConfig) -> list[str]:
    """Folders that would hurt the run or the data: an output_dir that is, lies in or holds a dataset
    folder, a cache_dir that is a file or lies in a dataset folder (nothing is written into datasets)."""
    d, t = cfg.data, cfg.train
    e = []
    folders = dataset_dirs(d)
    for key, folder in folders:
        how = nested(t.output_dir, folder)
        if how in ("equal", "inside"):
            e.append(f"train.output_dir={t.output_dir!r} is {'' if how == 'equal' else 'inside '}the dataset folder "
                     f"{key}={folder!r}: the run's checkpoints, samples and LoRA files would land among the images; "
                     "choose an output_dir outside it.")
        elif how == "contains":
            e.append(f"{key}={folder!r} is inside train.output_dir={t.output_dir!r}: keep the dataset out of the run "
                     "folder, where the trainer writes and prunes files (sample/, checkpoint-*, <name>-*.safetensors).")
    to_disk = d.cache_latents_to_disk or d.cache_text_encoder_outputs_to_disk
    cache = d.cache_dir or (str(default_cache_dir()) if to_disk else None)
    if cache and (blocking := blocking_file(cache)) is not None:
        e.append(f"data.cache_dir={cache!r}: {blocking} is a file; expected a directory for the disk cache.")
    for key, folder in folders if cache else ():
        if nested(cache, folder) in ("equal", "inside"):
            e.append(f"data.cache_dir={cache!r} is in the dataset folder {key}={folder!r}; lorakit never writes into "
                     "dataset folders: choose another cache_dir.")
    return e


def _sampler_problem(name: str) -> list[str]:
    try:
        check_sampler(name)
    except ValueError as exc:
        return [str(exc)]
    return []


def parse(data: dict, check_paths: bool = True) -> tuple[SDRunConfig, list[str]]:
    """(config, every problem): bad keys are reported and left at their defaults, so checks go on."""
    errors: list[str] = []
    unknown_sections(data, set(SECTIONS) | {"task"}, errors)
    cfg = SDRunConfig(**{name: parse_section(name, cls, data.get(name), errors) for name, cls in SECTIONS.items()})
    t = cfg.train
    # the shared Checkpointer reads these: a resumable checkpoint goes with every saved LoRA file
    t.save_every, t.save_every_epochs = t.save_every_n_steps or 0, t.save_every_n_epochs or 0
    return cfg, errors + problems(cfg, check_paths)


def from_dict(data: dict, check_paths: bool = True) -> SDRunConfig:
    """Build an ``SDRunConfig``, raising one ``ConfigError`` with every problem."""
    cfg, errors = parse(data, check_paths)
    if errors:
        raise ConfigError(errors, "diffusion training config")
    return cfg
