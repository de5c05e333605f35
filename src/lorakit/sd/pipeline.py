"""Load a local Stable Diffusion, FLUX.1 or SD3 model (nothing is downloaded) and tell its family.

``path`` is a diffusers directory (``model_index.json``) or a single-file checkpoint
(``.safetensors``; ``.ckpt`` pickles are refused) with ``config`` = a local diffusers directory
holding the matching configs. Families: ``sd1``, ``sd2`` (epsilon), ``sd2-v`` (v-prediction), ``sdxl``,
``flux1`` (FluxPipeline: dev, schnell) and ``sd3`` (StableDiffusion3Pipeline: SD3, SD3.5). For FLUX.1/SD3
a single file is the transformer's weights (``flux1-dev.safetensors``); the text encoders, VAE and
scheduler come from ``config``.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from ..formats._io import pickle_hint

FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl", "flux1", "sd3")
DIT_PIPELINES = {"FluxPipeline": "flux1", "StableDiffusion3Pipeline": "sd3"}


def detect_family(pipe=None, *, unet_config=None, scheduler_config=None) -> str:
    """``sd1``/``sd2``/``sd2-v``/``sdxl`` from the U-Net config (text_time -> SDXL, 1024-wide context -> SD2)
    and the scheduler's ``prediction_type`` (v_prediction on SD2 -> ``sd2-v``); ``flux1``/``sd3`` from a
    FLUX.1/SD3 pipeline's class."""
    if pipe is not None and type(pipe).__name__ in DIT_PIPELINES:
        return DIT_PIPELINES[type(pipe).__name__]
    if pipe is not None:
        unet_config = pipe.unet.config
        scheduler_config = pipe.scheduler.config
    if unet_config is None:
        raise ValueError("detect_family needs a pipeline or a unet_config.")
    get = unet_config.get if isinstance(unet_config, dict) else lambda k, d=None: getattr(unet_config, k, d)
    if get("addition_embed_type") == "text_time":
        return "sdxl"
    if get("cross_attention_dim") == 1024:
        pred = (scheduler_config or {}).get("prediction_type", "epsilon")
        return "sd2-v" if pred == "v_prediction" else "sd2"
    return "sd1"


def _family_of_dir(directory: Path) -> str:
    index = json.loads((directory / "model_index.json").read_text())
    if index.get("_class_name") in DIT_PIPELINES:
        return DIT_PIPELINES[index["_class_name"]]
    if not (directory / "unet" / "config.json").is_file():
        raise ValueError(f"{directory}: a {index.get('_class_name')} pipeline; lorakit generates with Stable Diffusion "
                         f"(unet/), {' and '.join(DIT_PIPELINES)} pipelines.")
    unet = json.loads((directory / "unet" / "config.json").read_text())
    sched_path = directory / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text()) if sched_path.is_file() else {}
    family = detect_family(unet_config=unet, scheduler_config=sched)
    if family != "sdxl" and "XL" in index.get("_class_name", ""):
        raise ValueError(f"{directory}: model_index says {index['_class_name']} but the U-Net config is {family}.")
    return family


def _check_family(family: str, found: str, where) -> None:
    if family not in ("auto", *FAMILIES):
        raise ValueError(f"family={family!r}: expected auto or one of {FAMILIES}.")
    if family != "auto" and family != found:
        raise ValueError(f"{where} is a {found} model but family={family!r} was given; pass family='auto' or "
                         "the right family.")


def _pipeline_class(family: str):
    """(class, extra kwargs): the safety checker is not loaded (A1111 has none either)."""
    import diffusers

    if family in ("flux1", "sd3"):
        return getattr(diffusers, {v: k for k, v in DIT_PIPELINES.items()}[family]), {}
    if family == "sdxl":
        return diffusers.StableDiffusionXLPipeline, {}
    return diffusers.StableDiffusionPipeline, {"safety_checker": None, "requires_safety_checker": False}


def is_lora_file(path) -> bool:
    """Whether a ``.safetensors`` file holds LoRA keys (kohya ``lora_unet_...``, diffusers ``...lora...``)."""
    from safetensors import safe_open

    from ..formats.kohya import is_kohya
    from ..formats.peft_sd import is_diffusers

    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    except Exception:  # noqa: BLE001  (not a safetensors file: the loader reports it)
        return False
    return is_kohya(keys) or (is_diffusers(keys) and any("lora" in k for k in keys))


@contextmanager
def _bars_on_a_terminal_only():
    """diffusers' and transformers' loading bars while stderr is a terminal; in a log file (a training the web UI
    launched) they are carriage-return noise. Each library's setting is restored after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libs = [] if sys.stderr.isatty() else [lib for lib in (diffusers_logging, transformers_logging)
                                           if lib.is_progress_bar_enabled()]
    for lib in libs:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libs:
            lib.enable_progress_bar()


def load_pipeline(path, *, config=None, family: str = "auto", dtype=torch.float32, device="cpu"):
    """(pipeline, family) for a local diffusers dir or single-file checkpoint; see the module docstring.

    The safety checker is not loaded, as in A1111.
    """
    path = Path(path)
    with _bars_on_a_terminal_only():
        pipe, found = _load(path, config, family, dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    pipe._lorakit_source = path
    return pipe, found


def _load(path: Path, config, family: str, dtype):
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist; expected a diffusers directory or a .safetensors "
                                "checkpoint.")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path} is a directory without model_index.json; expected a diffusers pipeline "
                             "directory (save one with pipe.save_pretrained).")
        found = _family_of_dir(path)
        _check_family(family, found, path)
        cls, extra = _pipeline_class(found)
        pipe = cls.from_pretrained(path, dtype=dtype, local_files_only=True, **extra)
    else:
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: only .safetensors checkpoints are read (a {path.suffix} file is a pickle "
                             f"that can run code). {pickle_hint(path)}")
        if is_lora_file(path):
            raise ValueError(f"{path} is a LoRA file, not a model: give the base model (a diffusers directory or a "
                             f"checkpoint) as the model, and the LoRA in the prompt as <lora:{path.stem}:1> with "
                             f"--lora-dir {path.parent}.")
        if config is None:
            raise ValueError(f"{path} is a single-file checkpoint: pass config= (--config), a local diffusers "
                             "directory with the matching model_index.json and component configs; nothing is "
                             "downloaded.")
        config = Path(config)
        found = _family_of_dir(config)
        _check_family(family, found, config)
        cls, extra = _pipeline_class(found)
        if found in ("flux1", "sd3"):
            transformer = load_transformer(path, config / "transformer", dtype)
            pipe = cls.from_pretrained(config, transformer=transformer, dtype=dtype, local_files_only=True)
        else:
            pipe = cls.from_single_file(str(path), config=str(config), dtype=dtype, local_files_only=True, **extra)
    return pipe, found


def load_transformer(path: Path, config_dir: Path, dtype=torch.float32):
    """A FLUX.1/SD3 transformer from one ``.safetensors`` file: diffusers names load into the model built
    from ``config_dir``; original (BFL/SAI, ComfyUI ``model.diffusion_model.``) names go through diffusers'
    own single-file converter, which knows only the real models' widths."""
    import diffusers

    from ..formats._io import read_safetensors

    config = json.loads((config_dir / "config.json").read_text())
    cls = getattr(diffusers, config["_class_name"])
    state, _ = read_safetensors(path)
    if any(k.startswith(("transformer_blocks.", "single_transformer_blocks.")) for k in state):
        model = cls.from_config(config).to(dtype)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: its tensors do not fit {config_dir} ({len(missing)} missing, e.g. "
                             f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); is --config the "
                             "matching model?")
        return model
    return cls.from_single_file(str(path), config=str(config_dir.parent), subfolder=config_dir.name, dtype=dtype,
                                local_files_only=True)
