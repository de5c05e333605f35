"""The diffusion task: SD1/SD2/SD2-v/SDXL LoRA training behind the shared loop (``lorakit.train``)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from ...train.activations import checkpoint_activations
from ...train.optim import make_optimizer
from ...train.task import Parts
from . import dit_task
from .callbacks import LoraSaver, TimestepLoss, sampler_callback
from .config import SDRunConfig, from_dict
from .dataset import build_dataset
from .dit import DIT_FAMILIES, dit_family_of_dir
from .export import save_network
from .family import FAMILIES, Family, load_components, model_bucket_step
from .network import add_network, load_network_weights, param_groups
from .step import SDNetwork
from .validate import bucket_table

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_dit(cfg: SDRunConfig) -> bool:
    """Whether the run trains a FLUX.1/SD3 transformer: the configured family, else the model's model_index.json."""
    if cfg.model.family != "auto":
        return cfg.model.family in DIT_FAMILIES
    path = Path(cfg.model.path)
    return dit_family_of_dir(Path(cfg.model.config) if path.is_file() and cfg.model.config else path) is not None


def resolve_family(cfg: SDRunConfig, found: str) -> Family:
    """The configured family; ``sd2``/``sd2-v`` may override each other (the U-Net is the same), others must match."""
    want = cfg.model.family
    if want != "auto" and want.split("-")[0] != found.split("-")[0]:
        raise ValueError(f"model.family={want!r} but {cfg.model.path} is an {found.upper()} model (from its U-Net "
                         "config); set model.family to 'auto' or to the model's family.")
    return FAMILIES[found if want == "auto" else want]


def prediction_type(cfg: SDRunConfig, family: Family, scheduler_config: dict) -> str:
    if cfg.model.prediction_type != "auto":
        return cfg.model.prediction_type
    if family.name == "sd2-v":
        return "v_prediction"
    return scheduler_config.get("prediction_type", "epsilon")


def part_lrs(cfg: SDRunConfig, family: Family) -> dict[str, float]:
    t = cfg.train
    unet = t.unet_lr if t.unet_lr is not None else t.lr
    te = 0.0 if cfg.network.train_unet_only else (t.text_encoder_lr if t.text_encoder_lr is not None else t.lr)
    return {"unet": unet, **{p: te for p in family.text_parts}}


def weights_key(module: torch.nn.Module, *extra) -> str:
    """A content key of a frozen module (for cache keys): its dtype, shapes and a sample of every tensor."""
    h = hashlib.sha256(repr(extra).encode())
    for name, t in module.state_dict().items():
        flat = t.detach().reshape(-1)
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(flat[:: max(1, flat.numel() // 256)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


class DiffusionTask:
    name = "diffusion"

    def parse_config(self, data: dict, check_paths: bool = True) -> SDRunConfig:
        return from_dict(data, check_paths)

    def validate(self, data: dict) -> tuple[list[str], str]:
        from .validate import validate

        return validate(data)

    def build(self, cfg: SDRunConfig, device: torch.device, comps: dict | None = None,
              check_save: bool = True) -> Parts:
        """The trainable network (``comps`` skips loading: the memory calculator's fake models; it passes
        ``check_save=False``, as fake weights cannot go through a trial save)."""
        if is_dit(cfg):
            return dit_task.build(cfg, device, comps, check_save)
        t = cfg.train
        if comps is None:
            comps = load_components(cfg.model.path, cfg.model.config, DTYPES[cfg.model.dtype])
        family = resolve_family(cfg, comps["family"])
        prediction = prediction_type(cfg, family, comps["scheduler_config"])
        lrs = part_lrs(cfg, family)
        adapted = add_network(comps, cfg.network, family.text_parts, lrs)
        if cfg.network.network_weights:
            load_network_weights(comps, cfg.network.network_weights)
        for key in ("unet", "vae", *family.text_parts):
            comps[key].to(device)
            for p in comps[key].parameters():  # adapters in fp32, the frozen base in model.dtype
                if p.requires_grad:
                    p.data = p.data.float()
        if t.gradient_checkpointing:
            comps["unet"].enable_gradient_checkpointing()
            for part in adapted:
                if part != "unet":
                    checkpoint_activations(comps[part])
        net = SDNetwork(family, comps, t, prediction)
        adapters = [layer.adapters for m in (comps["unet"], *net.text_encoders.values())
                    for layer in m.modules() if hasattr(layer, "adapters")]
        return Parts(net, adapters, {"components": comps, "family": family, "prediction": prediction, "lrs": lrs,
                                     "adapted": adapted, "helpers": [comps["vae"]]})

    def data(self, cfg: SDRunConfig, parts: Parts, rank: int, world: int):
        if parts.extra.get("dit"):
            return dit_task.data(cfg, parts, rank, world)
        comps, family, t = parts.extra["components"], parts.extra["family"], cfg.train
        te_frozen = all(parts.extra["lrs"][p] == 0 for p in family.text_parts)
        return task_batches(cfg, parts, rank, world, (family.name, t.clip_skip, t.max_token_length) if te_frozen
                            else None, model_bucket_step(comps["unet"].config, comps["vae"].config))

    def step_plan(self, cfg: SDRunConfig, data, world: int) -> tuple[int, int, str]:
        t = cfg.train
        per_epoch = len(data) // t.grad_accum
        if per_epoch < 1:
            raise ValueError(f"one epoch has {len(data)} micro-batches, fewer than train.grad_accum={t.grad_accum}; "
                             "lower grad_accum or add images/repeats.")
        total = t.max_steps if t.max_steps is not None else max(1, math.ceil(t.epochs * per_epoch))
        data.max_train_steps = total
        plan = f"{bucket_table(data)}\n{data.explain_steps()}\nsteps = "
        return per_epoch, total, plan + f"{per_epoch} per epoch x {t.epochs:g} epochs"

    def param_groups(self, parts: Parts, cfg: SDRunConfig) -> list[dict]:
        comps = parts.extra["components"]
        return param_groups(comps, cfg.network, parts.extra["lrs"], cfg.train.weight_decay)

    def make_optimizer(self, groups: list[dict], cfg: SDRunConfig, device: torch.device):
        return make_optimizer(groups, cfg.train, device)

    @staticmethod
    def loss(model, batch: dict):
        return model(batch), {"samples": len(batch["loss_weight"])}

    def callbacks(self, cfg: SDRunConfig, parts: Parts, data, device: torch.device) -> list:
        if parts.extra.get("dit"):
            return dit_task.callbacks(cfg, parts, device)
        save = lambda path, state: self._save(parts, cfg, path, state)  # noqa: E731
        cbs = [TimestepLoss(Path(cfg.train.output_dir), parts.model.schedule.num_steps, cfg.train.plot),
               LoraSaver(Path(cfg.train.output_dir), cfg.train.output_name, cfg.train.keep_last, save)]
        sampler = parts.extra["sampler"] = sampler_callback(cfg, parts, device)
        return cbs + ([sampler] if sampler is not None else [])

    def _save(self, parts: Parts, cfg: SDRunConfig, path: Path, state) -> Path:
        if parts.extra.get("dit"):
            return dit_task.save(parts, cfg, path, state)
        meta = parts.extra["batches"].metadata() if "batches" in parts.extra else {}
        return save_network(path, parts.extra["components"], cfg, parts.extra["family"], parts.extra["prediction"],
                            meta, state)

    def export(self, parts: Parts, cfg: SDRunConfig, run_dir: Path, state) -> Path:
        return self._save(parts, cfg, Path(run_dir) / f"{cfg.train.output_name}.safetensors", state)

    def summary(self, parts: Parts, cfg: SDRunConfig, device: torch.device) -> dict:
        sampler = parts.extra.get("sampler")
        errors = {"sample_errors": sampler.errors} if sampler is not None and sampler.errors else {}
        if parts.extra.get("dit"):
            return {**dit_task.summary(parts, cfg), **errors}
        return {"family": parts.extra["family"].name, "prediction_type": parts.extra["prediction"],
                "network_module": cfg.network.module,
                "adapted_modules": {k: len(v) for k, v in parts.extra["adapted"].items()},
                **errors}


def task_batches(cfg: SDRunConfig, parts: Parts, rank: int, world: int, text_settings: tuple | None,
                 bucket_step: int):
    """The run's batches, with the latent cache and (when the text encoders are frozen: ``text_settings``,
    everything besides their weights that shapes their output) the text cache, keyed by content."""
    net, comps, t = parts.model, parts.extra["components"], cfg.train
    frozen = text_settings is not None
    batches = build_dataset(cfg.data, batch_size=t.batch_size, seed=t.seed, world=world, rank=rank,
                            encode_latents=net.encode_latents, vae_key=weights_key(comps["vae"], net.scaling, net.shift),
                            encode_text=_no_grad(net.encode_text) if frozen else None,
                            text_key=weights_key(net.text_encoders, *text_settings) if frozen else None,
                            bucket_step=bucket_step)
    if batches.problems:
        raise ValueError("the dataset has problems (run `lorakit validate` for the full report):\n  - "
                         + "\n  - ".join(batches.problems[:30]))
    batches.grad_accum = t.grad_accum
    parts.extra["batches"] = batches
    return batches


def _no_grad(fn):
    def wrapped(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)
    return wrapped


TASK = DiffusionTask()
