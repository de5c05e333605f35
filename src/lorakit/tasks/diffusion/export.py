"""Saving the trained network as kohya writes it: ``.safetensors`` with kohya / LyCORIS keys, the
``ss_*`` metadata of ``train_network.py`` (network, training, dataset), ``sshs_*`` hashes and
``modelspec.*``, so A1111, ComfyUI and diffusers load it and show its training details."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ...formats.kohya import write_kohya
from .network import conv_alpha, to_lorafile


def training_metadata(cfg, family, prediction: str, dataset_meta: dict[str, str], state=None) -> dict[str, str]:
    """kohya's ``ss_*`` training and network keys (all strings) plus the dataset's entries."""
    t, n = cfg.train, cfg.network
    algo = n.module
    network_args = {}
    if n.conv_dim:
        network_args.update(conv_dim=str(n.conv_dim), conv_alpha=f"{conv_alpha(n):g}")
    if algo != "lora":
        network_args["algo"] = "locon" if algo == "dora" else algo
        if algo == "dora":
            network_args["dora_wd"] = "True"
    for key in ("rank_dropout", "module_dropout"):
        if getattr(n, key):
            network_args[key] = str(getattr(n, key))
    if n.loraplus_lr_ratio:
        network_args["loraplus_lr_ratio"] = str(n.loraplus_lr_ratio)
    for key in ("down_lr_weight", "mid_lr_weight", "up_lr_weight"):
        if getattr(n, key) is not None:
            network_args[key] = json.dumps(getattr(n, key))
    step = state.step if state is not None else 0
    spe = max(getattr(state, "steps_per_epoch", 0) or 1, 1)
    meta = {
        "ss_session_id": str(t.seed),
        "ss_training_started_at": str(getattr(state, "started_at", None) or time.time()),  # kept across resumes
        "ss_output_name": t.output_name, "ss_sd_model_name": Path(cfg.model.path).name,
        "ss_base_model_version": family.base_version, "ss_v2": str(family.name.startswith("sd2")),
        "ss_network_module": "lycoris.kohya" if algo != "lora" else "networks.lora",
        "ss_network_dim": str(n.dim), "ss_network_alpha": f"{n.alpha:g}",
        "ss_network_dropout": str(n.dropout or None), "ss_network_args": json.dumps(network_args) if network_args else "null",
        "ss_network_train_unet_only": str(n.train_unet_only),
        "ss_learning_rate": str(t.lr), "ss_unet_lr": str(t.unet_lr if t.unet_lr is not None else t.lr),
        "ss_text_encoder_lr": str(t.text_encoder_lr if t.text_encoder_lr is not None else t.lr),
        "ss_optimizer": t.optimizer + (f"({json.dumps(t.optimizer_args)})" if t.optimizer_args else ""),
        "ss_lr_scheduler": t.scheduler, "ss_lr_warmup_steps": str(t.warmup_steps),
        "ss_max_grad_norm": str(t.max_grad_norm or 0.0), "ss_mixed_precision": t.mixed_precision,
        "ss_full_fp16": "False", "ss_gradient_checkpointing": str(t.gradient_checkpointing),
        "ss_gradient_accumulation_steps": str(t.grad_accum), "ss_seed": str(t.seed),
        "ss_clip_skip": str(t.clip_skip), "ss_max_token_length": str(t.max_token_length),
        "ss_noise_offset": str(t.noise_offset or None), "ss_adaptive_noise_scale": str(t.adaptive_noise_scale),
        "ss_multires_noise_iterations": str(t.multires_noise_iterations or None),
        "ss_multires_noise_discount": str(t.multires_noise_discount), "ss_ip_noise_gamma": str(t.ip_noise_gamma or None),
        "ss_min_snr_gamma": str(t.min_snr_gamma), "ss_debiased_estimation": str(t.debiased_estimation_loss),
        "ss_zero_terminal_snr": str(t.zero_terminal_snr), "ss_loss_type": t.loss_type,
        "ss_huber_c": str(t.huber_c), "ss_prediction_type": prediction,
        "ss_min_timestep": str(t.min_timestep), "ss_max_timestep": str(t.max_timestep),
        "ss_max_train_steps": str(getattr(state, "total_steps", 0)), "ss_num_epochs": f"{t.epochs:g}",
        "ss_steps": str(step), "ss_epoch": str(step // spe), "ss_training_finished_at": str(time.time()),
        "ss_caption_dropout_rate": str(cfg.data.caption_dropout_rate),
        "ss_caption_tag_dropout_rate": str(cfg.data.caption_tag_dropout_rate),
        "ss_prior_loss_weight": str(cfg.data.prior_loss_weight),
        "modelspec.title": t.output_name, "modelspec.resolution": str(cfg.data.resolution),
        "modelspec.prediction_type": prediction,
    }
    meta.update(dataset_meta)
    return meta


def save_network(path: Path, parts: dict, cfg, family, prediction: str, dataset_meta: dict, state=None) -> Path:
    """Write the live adapters to ``path`` (atomic) in ``train.save_precision``; returns the path."""
    lf = to_lorafile(parts, family.name, training_metadata(cfg, family, prediction, dataset_meta, state))
    write_kohya(lf, path, dtype=cfg.train.save_precision, family=family.lora_family)
    return path


def saved_files(run_dir: Path, name: str) -> list[Path]:
    """Intermediate files of a run (``name-000001``, ``name-step00000100``), oldest first."""
    found = list(Path(run_dir).glob(f"{name}-*.safetensors"))
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)
