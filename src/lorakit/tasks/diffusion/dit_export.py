"""Saving a FLUX.1 / SD3 network as kohya's trainers write it, or in diffusers/PEFT or ComfyUI keys
(``train.save_format``), through the DiT formats layer (``lorakit.formats.dit_io``: fused q/k/v from
the shared downs at the trained rank), and starting a run from such a file (``network.network_weights``).

Metadata: the shared ``ss_*`` keys of ``export.training_metadata`` plus kohya's flow keys
(``ss_guidance_scale``, ``ss_timestep_sampling``, ``ss_discrete_flow_shift``,
``ss_model_prediction_type``, ``ss_weighting_scheme``, ``ss_logit_mean``/``_std``, ``ss_mode_scale``,
``ss_sigmoid_scale``, ``ss_apply_t5_attn_mask``, ``ss_model_type``) and ``modelspec.architecture``
(``flux-1-dev/lora``, ``flux-1-schnell/lora``, ``stable-diffusion-3-medium/lora``, ``-3-5-large``,
``-3-5-medium``, as kohya's ``sai_model_spec`` names them).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...formats.dit_keys import TRANSFORMER, split_entry, te_path
from ...model import lora_layers
from .export import training_metadata
from .network import ADAPTER, fill_adapters

PARTS = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
#: metadata keys of the U-Net families that say nothing true about a flow-matching run
SD_KEYS = ("ss_v2", "ss_clip_skip", "ss_max_token_length", "ss_min_snr_gamma", "ss_debiased_estimation",
           "ss_zero_terminal_snr", "ss_prediction_type", "ss_min_timestep", "ss_max_timestep",
           "modelspec.prediction_type")


def architecture(family, transformer_config) -> str:
    """kohya's ``modelspec.architecture`` of a LoRA for this transformer."""
    get = transformer_config.get
    if family.name == "flux1":
        return ("flux-1-dev" if get("guidance_embeds", False) else "flux-1-schnell") + "/lora"
    if get("qk_norm") is None:
        return "stable-diffusion-3-medium/lora"
    return f"stable-diffusion-3-{'5-medium' if get('dual_attention_layers') else '5-large'}/lora"


def dit_metadata(cfg, family, prediction: str, transformer_config, dataset_meta: dict, state=None) -> dict[str, str]:
    t, n = cfg.train, cfg.network
    meta = {k: v for k, v in training_metadata(cfg, family, prediction, dataset_meta, state).items() if k not in SD_KEYS}
    args = json.loads(meta["ss_network_args"]) if meta["ss_network_args"] != "null" else {}
    default = type(n)()
    for key in ("train_blocks", "train_double_block_indices", "train_single_block_indices", "train_block_indices",
                "split_qkv", "train_t5xxl", "quantize"):
        if getattr(n, key) != getattr(default, key):
            args[key] = str(getattr(n, key))
    meta.update({
        "ss_network_module": "lycoris.kohya" if n.module != "lora" else f"networks.lora_{'flux' if family.name == 'flux1' else 'sd3'}",
        "ss_network_args": json.dumps(args) if args else "null",
        "ss_guidance_scale": str(t.guidance_scale), "ss_timestep_sampling": t.timestep_sampling,
        "ss_discrete_flow_shift": str(t.discrete_flow_shift), "ss_model_prediction_type": prediction,
        "ss_weighting_scheme": t.weighting_scheme, "ss_logit_mean": str(t.logit_mean), "ss_logit_std": str(t.logit_std),
        "ss_mode_scale": str(t.mode_scale), "ss_sigmoid_scale": str(t.sigmoid_scale),
        "ss_apply_t5_attn_mask": str(t.apply_t5_attn_mask), "ss_t5xxl_max_token_length": str(t.t5xxl_max_token_length),
        "modelspec.architecture": architecture(family, transformer_config),
        "modelspec.implementation": "https://github.com/black-forest-labs/flux" if family.name == "flux1"
        else "https://github.com/Stability-AI/sd3.5",
    })
    if family.name == "flux1":
        meta["ss_model_type"] = "flux"
    else:
        meta["ss_apply_lg_attn_mask"] = str(t.apply_lg_attn_mask)
    return meta


def save_dit_network(path: Path, parts: dict, cfg, family, prediction: str, dataset_meta: dict, state=None) -> Path:
    """Write the live adapters to ``path`` (atomic) in ``train.save_format`` and ``train.save_precision``."""
    from ...formats.sd_io import write_lora
    from ...sd.dit_lora import lora_file_from_model

    meta = dit_metadata(cfg, family, prediction, parts["transformer"].config, dataset_meta, state)
    models = {k: parts[k] for k in PARTS if parts.get(k) is not None}
    lf = lora_file_from_model(models, ADAPTER, family=family.name, metadata=meta)
    write_lora(lf, path, to=cfg.train.save_format, dtype=cfg.train.save_precision, family=family.name)
    return path


def check_savable(parts: dict, family, cfg) -> None:
    """Convert the freshly built network to ``train.save_format`` once before training, so a network the
    format cannot hold (LoHa/LoKr as diffusers keys; LoKr on FLUX.1's fused single-block layer, whose
    parts have different widths) is refused at the start, not at the first save."""
    from ...formats.dit_io import to_state_dict
    from ...sd.dit_lora import lora_file_from_model

    models = {k: parts[k] for k in PARTS if parts.get(k) is not None}
    try:
        to_state_dict(lora_file_from_model(models, ADAPTER, family=family.name), cfg.train.save_format, family.name)
    except ValueError as exc:
        raise ValueError(f"network.module={cfg.network.module!r} cannot be saved as train.save_format="
                         f"{cfg.train.save_format!r} for {family.name}: {str(exc).splitlines()[0]} Choose another "
                         "module or save_format (LoRA and DoRA fit every format).") from None


def live_adapters(parts: dict, family) -> dict[str, torch.nn.Module]:
    """{``<pipeline attribute>.<module path>``: adapter} in the names ``dit_lora.on_model`` gives a file."""
    out = {}
    for attr in PARTS:
        model = parts.get(attr)
        if model is None:
            continue
        for path, layer in lora_layers(model):
            if ADAPTER in layer.adapters:
                name = split_entry(family.name, path)[3] if attr == TRANSFORMER else te_path(path)
                out[f"{attr}.{name}"] = layer.adapters[ADAPTER]
    return out


def load_dit_weights(parts: dict, family, path: str) -> int:
    """Start from the FLUX.1/SD3 LoRA file ``path`` in any format (kohya ``--network_weights``). A fused
    q/k/v module split onto adapters that share one down must carry one down for all its parts."""
    from ...formats.sd_io import read_lora
    from ...sd.dit_lora import on_model

    lf = on_model(read_lora(path), {k: parts[k] for k in PARTS if parts.get(k) is not None}, str(path))
    live = live_adapters(parts, family)
    shared: dict[int, tuple[str, torch.Tensor]] = {}
    for key, tensors in lf.modules.items():
        ad, down = live.get(key), tensors.get("lora_down.weight")
        if ad is None or down is None or not hasattr(ad, "lora_A"):
            continue  # fill_adapters names it
        first = shared.setdefault(id(ad.lora_A), (key, down))
        if not torch.equal(first[1], down):
            raise ValueError(f"network.network_weights={path}: {key} and {first[0]} have different down factors, but "
                             "this network shares one down per fused q/k/v layer (kohya's layout); set "
                             "network.split_qkv: true to continue a file trained with separate ones.")
    return fill_adapters(live, lf.modules, path)

