"""The diffusion task's FLUX.1 / SD3 side: building the parts, the data (buckets on the transformer's
token grid, caches keyed by the encoders and settings), parameter groups, callbacks and the saved file.
``task.DiffusionTask`` hands a run here when the model is a ``FluxPipeline`` or ``StableDiffusion3Pipeline``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...config import ConfigError
from ...train.activations import checkpoint_activations
from ...train.task import Parts
from .blockswap import swap_blocks
from .dit import DIT_FAMILIES, DitFamily, bucket_step, t5_length
from .dit_config import family_problems
from .dit_export import check_savable, save_dit_network
from .dit_network import add_dit_network
from .dit_step import NUM_STEPS, DitNetwork

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_dit_components(path: str, config: str | None, dtype: torch.dtype, drop_t5: bool = False) -> dict:
    """{transformer, vae, text encoders, tokenizers, scheduler_config, family, pipe} of a local FLUX.1/SD3
    model through lorakit's pipeline loader (nothing is downloaded); the VAE runs in float32. ``drop_t5``
    removes SD3's T5 from the pipeline too, so samples run as training does (zero T5 states)."""
    from ...sd.pipeline import load_pipeline

    pipe, family = load_pipeline(path, config=config, dtype=dtype)
    if drop_t5:
        pipe.text_encoder_3 = pipe.tokenizer_3 = None
    names = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
             "tokenizer_3")
    parts = {k: getattr(pipe, k) for k in names if getattr(pipe, k, None) is not None}
    parts["vae"] = parts["vae"].float()
    parts.update(scheduler_config=dict(pipe.scheduler.config), family=family, pipe=pipe)
    return parts


def prediction_type(cfg, family: DitFamily) -> str:
    """``raw`` (velocity) for FLUX.1, ``sigma_scaled`` (x0, SD3's trainers) for SD3 unless configured."""
    want = cfg.train.model_prediction_type
    return want if want != "auto" else ("raw" if family.name == "flux1" else "sigma_scaled")


def part_lrs(cfg, family: DitFamily, comps: dict) -> dict[str, float]:
    t, n = cfg.train, cfg.network
    te = 0.0 if n.train_unet_only else (t.text_encoder_lr if t.text_encoder_lr is not None else t.lr)
    lrs = {"transformer": t.unet_lr if t.unet_lr is not None else t.lr}
    lrs.update({p: te for p in family.text_parts(n.train_t5xxl) if comps.get(p) is not None})
    return lrs


def _to_device(comps: dict, device: torch.device, swapped) -> None:
    """Every part to ``device``, except the frozen tensors of swapped blocks (they stay in CPU memory)."""
    keep = {id(b) for b in swapped.blocks} if swapped else set()
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        if comps.get(name) is not None:
            comps[name].to(device)
    tr = comps["transformer"]
    for child in tr.children():
        if isinstance(child, torch.nn.ModuleList):
            for block in child:
                if id(block) not in keep:
                    block.to(device)
        else:
            child.to(device)
    for module in (tr, *(comps.get(n) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))):
        for p in (module.parameters() if module is not None else ()):
            if p.requires_grad:  # adapters in fp32 on the device, the frozen base in model.dtype
                p.data = p.data.to(device, torch.float32)


def build(cfg, device: torch.device, comps: dict | None = None, check_save: bool = True) -> Parts:
    """The trainable network of a FLUX.1/SD3 run (``comps`` skips loading: the tests' in-memory models;
    ``check_save``: convert the new network to the save format once, see ``check_savable``)."""
    t, m = cfg.train, cfg.model
    if comps is None:
        comps = load_dit_components(m.path, m.config, DTYPES[m.dtype], m.drop_t5)
    found = comps["family"]
    if m.family not in ("auto", found):
        raise ValueError(f"model.family={m.family!r} but {m.path} is a {found} model (its model_index.json); set "
                         "model.family to 'auto' or to the model's family.")
    family = DIT_FAMILIES[found]
    problems = family_problems(cfg, found)
    if t.blocks_to_swap and device.type != "cuda":
        problems.append(f"train.blocks_to_swap={t.blocks_to_swap}: block swap moves blocks between CPU memory "
                        f"and a GPU; the device is {device.type}. Remove it.")
    if problems:
        raise ConfigError(problems, "diffusion training config")
    lrs = part_lrs(cfg, family, comps)
    adapted = add_dit_network(comps, family, cfg.network, lrs, compute_dtype=m.dtype)
    if check_save:
        check_savable(comps, family, cfg)
    if cfg.network.network_weights:
        from .dit_export import load_dit_weights

        load_dit_weights(comps, family, cfg.network.network_weights)
    swapped = swap_blocks(comps["transformer"], family.name, t.blocks_to_swap, device)
    _to_device(comps, device, swapped)
    if t.gradient_checkpointing:
        comps["transformer"].enable_gradient_checkpointing()
        for part in adapted:
            if part != "transformer":
                checkpoint_activations(comps[part])
    tokens = t5_length(family, comps["transformer"].config, t.t5xxl_max_token_length)
    net = DitNetwork(family, comps, t, prediction_type(cfg, family), tokens)
    adapters = [layer.adapters for part in adapted for layer in comps[part].modules() if hasattr(layer, "adapters")]
    return Parts(net, adapters, {"components": comps, "family": family, "prediction": net.prediction, "lrs": lrs,
                                 "adapted": adapted, "swap": swapped, "dit": True,
                                 "helpers": [comps["vae"]]})


def data(cfg, parts: Parts, rank: int, world: int):
    from .task import task_batches

    net, comps, family, t = parts.model, parts.extra["components"], parts.extra["family"], cfg.train
    te_frozen = all(lr == 0 for p, lr in parts.extra["lrs"].items() if p != "transformer")
    settings = (family.name, net.t5_tokens, t.apply_t5_attn_mask, t.apply_lg_attn_mask, sorted(net.text_encoders))
    return task_batches(cfg, parts, rank, world, settings if te_frozen else None,
                        bucket_step(comps["transformer"].config, comps["vae"].config))


def callbacks(cfg, parts: Parts, device: torch.device) -> list:
    from .callbacks import LoraSaver, TimestepLoss, sampler_callback

    run_dir = Path(cfg.train.output_dir)
    cbs = [TimestepLoss(run_dir, NUM_STEPS, cfg.train.plot),
           LoraSaver(run_dir, cfg.train.output_name, cfg.train.keep_last, lambda path, state: save(parts, cfg, path, state))]
    sampler = parts.extra["sampler"] = sampler_callback(cfg, parts, device)
    return cbs + ([sampler] if sampler is not None else [])


def save(parts: Parts, cfg, path: Path, state) -> Path:
    meta = parts.extra["batches"].metadata() if "batches" in parts.extra else {}
    return save_dit_network(path, parts.extra["components"], cfg, parts.extra["family"], parts.extra["prediction"],
                            meta, state)


def summary(parts: Parts, cfg) -> dict:
    return {"family": parts.extra["family"].name, "prediction_type": parts.extra["prediction"],
            "network_module": cfg.network.module,
            "adapted_modules": {k: len(v) for k, v in parts.extra["adapted"].items()},
            "blocks_swapped": len(parts.extra["swap"].blocks) if parts.extra["swap"] else 0}
