"""The SD network: kohya's targets injected with lorakit's own ``inject``, kohya's parameter groups,
and the live adapters written back as a kohya / LyCORIS ``LoraFile``.

Targets (kohya ``networks/lora.py``): every Linear and Conv2d inside a ``Transformer2DModel``
(proj_in/out, attn1/attn2 to_q/k/v/out.0, ff.net.0.proj, ff.net.2) at ``dim``/``alpha``; with
``conv_dim``, also inside ``ResnetBlock2D``/``Downsample2D``/``Upsample2D`` (3x3 convs at
``conv_dim``/``conv_alpha``, their Linear and 1x1 children at ``dim``); text encoders: every Linear in
CLIP's attention and MLP. Block lr weights follow kohya's ``get_block_index``: down block i's
resnet/attention j is block 1 + 3i + j (its sampler 3i + 3), the mid block is block 3·n, up blocks follow.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from ...config import LoraConfig
from ...formats.lorafile import LoraFile, Naming, adapter_tensors
from ...formats.sd_keys import canonical_te, layout_from_config
from ...inject import inject
from ...model import lora_layers
from .dropout import add_dropouts

UNET_CLASSES = ("Transformer2DModel",)
CONV_CLASSES = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_CLASSES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")
ADAPTER = "default"
_UPDOWN = re.compile(r"(up|down)_blocks\.(\d+)\.(resnets|upsamplers|downsamplers|attentions)\.(\d+)\.")


def conv_alpha(net_args) -> float | None:
    """Alpha of the 3x3 convs: ``network.conv_alpha``, else the default of the tool the saved file names:
    kohya's ``networks/lora.py`` (module ``lora``) uses 1.0, LyCORIS' ``create_network`` (``dora``/``loha``/
    ``lokr``, saved as ``lycoris.kohya``) the network alpha. ``None`` without ``conv_dim``."""
    if not net_args.conv_dim:
        return None
    if net_args.conv_alpha is not None:
        return net_args.conv_alpha
    return 1.0 if net_args.module == "lora" else net_args.alpha


def kohya_targets(model: nn.Module, classes: tuple[str, ...]) -> list[str]:
    """Linear/Conv2d modules inside modules whose class name is in ``classes`` (kohya's rule)."""
    out = []
    for name, module in model.named_modules():
        if type(module).__name__ in classes:
            for child, sub in module.named_modules():
                if child and isinstance(sub, (nn.Linear, nn.Conv2d)):
                    out.append(f"{name}.{child}" if name else child)
    return list(dict.fromkeys(out))


def preset_weights(spec, n: int) -> list[float]:
    """kohya's ``get_block_lr_weight``: a list (padded with 1.0) or a preset name with an optional ``+offset``."""
    if isinstance(spec, list):
        return (list(spec) + [1.0] * n)[:n]
    name, _, base = spec.partition("+")
    base = float(base) if base else 0.0
    ramp = [i / (n - 1) for i in range(n)]
    sine = [math.sin(math.pi * r / 2) for r in ramp]
    table = {"cosine": sine[::-1], "sine": sine, "linear": ramp, "reverse_linear": ramp[::-1], "zeros": [0.0] * n}
    return [w + base for w in table[name]]


def block_index(path: str, n_blocks: int) -> int:
    """kohya's block number of a U-Net module path (-1 outside the down/mid/up blocks)."""
    m = _UPDOWN.search(path + ".")
    if m:
        i, kind, j = int(m.group(2)), m.group(3), int(m.group(4))
        idx = 3 * i + (2 if kind in ("upsamplers", "downsamplers") else j)
        return 1 + idx if m.group(1) == "down" else n_blocks + 1 + idx
    return n_blocks if path.startswith("mid_block.") else -1


def block_weights(net_args, unet) -> dict[str, float] | None:
    """{unet module path: lr weight} when block weights are set, else None."""
    if net_args.down_lr_weight is None and net_args.mid_lr_weight is None and net_args.up_lr_weight is None:
        return None
    n = 3 * len(unet.config.down_block_types)  # 12 for SD1/2, 9 for SDXL
    down = preset_weights(net_args.down_lr_weight, n) if net_args.down_lr_weight is not None else [1.0] * n
    up = preset_weights(net_args.up_lr_weight, n) if net_args.up_lr_weight is not None else [1.0] * n
    mid = 1.0 if net_args.mid_lr_weight is None else net_args.mid_lr_weight
    out = {}
    for name, _ in unet.named_modules():
        b = block_index(name, n)
        if b >= 0:
            out[name] = down[b - 1] if b < n else mid if b == n else up[b - n - 1]
    return out


def _is_big_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) != (1, 1)


def add_network(parts: dict, net_args, text_parts: tuple[str, ...], lrs: dict[str, float]) -> dict[str, list[str]]:
    """Inject adapters into the U-Net and (unless U-Net only or lr 0) the text encoders; return the
    adapted module paths per part. Every other parameter of every part is frozen (the VAE, a text encoder
    that is not trained, the base weights): ``from_pretrained`` leaves them all trainable."""
    adapted: dict[str, list[str]] = {}
    for part in parts.values():
        if isinstance(part, nn.Module):
            part.requires_grad_(False)
    weights = block_weights(net_args, parts["unet"])
    wanted = ["unet"] + ([] if net_args.train_unet_only else list(text_parts))
    for part in wanted:
        model = parts[part]
        if lrs[part] == 0:
            continue
        if part == "unet":
            names = kohya_targets(model, UNET_CLASSES)
            if net_args.conv_dim:
                names += [n for n in kohya_targets(model, CONV_CLASSES) if n not in names]
            if weights is not None:  # a block weight of 0 leaves the block out (kohya)
                names = [n for n in names if weights.get(n, 1.0) > 0]
        else:
            names = kohya_targets(model, TE_CLASSES)
        if not names:
            continue
        big = [n for n in names if _is_big_conv(model.get_submodule(n))]
        config = LoraConfig(r=net_args.dim, alpha=net_args.alpha, dropout=net_args.dropout, target_modules=names,
                            variant=net_args.module,
                            rank_pattern={re.escape(n): net_args.conv_dim for n in big},
                            alpha_pattern={re.escape(n): conv_alpha(net_args) for n in big})
        inject(model, config, ADAPTER)
        if net_args.rank_dropout or net_args.module_dropout:
            add_dropouts([layer.adapters[ADAPTER] for _, layer in lora_layers(model)], net_args.rank_dropout,
                         net_args.module_dropout)
        adapted[part] = names
    return adapted


def param_groups(parts: dict, net_args, lrs: dict[str, float], weight_decay: float = 0.0) -> list[dict]:
    """One group per (part, block weight, LoRA+ role): lr = part lr · block weight (· ratio for B factors)."""
    weights = block_weights(net_args, parts["unet"]) if "unet" in parts else None
    ratio = net_args.loraplus_lr_ratio
    groups: dict[tuple, dict] = {}
    seen: set[int] = set()  # a factor shared by several layers (a fused LoRA's down) is listed once
    for part, model in parts.items():
        if part not in lrs or not isinstance(model, nn.Module):
            continue
        for path, layer in lora_layers(model):
            w = weights.get(path, 1.0) if (weights and part == "unet") else 1.0
            for adapter in layer.adapters.values():
                b_names = set(getattr(adapter, "loraplus_b_params", ("lora_B",)))
                for pname, p in adapter.named_parameters():
                    if not p.requires_grad or id(p) in seen:
                        continue
                    seen.add(id(p))
                    boost = ratio if ratio and (pname in b_names or p.ndim == 1) else 1.0
                    lr = lrs[part] * w * boost
                    key = (part, lr)
                    group = groups.setdefault(key, {"params": [], "lr": lr, "weight_decay": weight_decay,
                                                    "name": f"{part} x{w:g}" + (" B" if boost != 1 else "")})
                    group["params"].append(p)
    if not groups:
        raise ValueError("the network has no trainable parameters: every part has learning rate 0 or no targets.")
    return list(groups.values())


def load_network_weights(parts: dict, path: str) -> int:
    """Start from the LoRA file ``path`` (kohya ``--network_weights``): every file module must find an adapter
    of the same rank; ``up`` is rescaled so the file's ΔW is reproduced at this network's alpha. Returns the
    number of modules loaded; raises (before changing anything) on a family mismatch or unmatched modules."""
    from ...formats.sd_io import read_lora
    from ...sd import check_family

    lf = read_lora(path, layout_from_config(parts["unet"].config))
    check_family(lf, {k: v for k, v in parts.items() if k in ("unet", "text_encoder", "text_encoder_2")}, path)
    live = {f"{part}.{p if part == 'unet' else canonical_te(p)}": layer.adapters[ADAPTER]
            for part in ("unet", "text_encoder", "text_encoder_2") if isinstance(parts.get(part), nn.Module)
            for p, layer in lora_layers(parts[part]) if ADAPTER in layer.adapters}
    return fill_adapters(live, lf.modules, path)


def fill_adapters(live: dict[str, nn.Module], modules: dict[str, dict], path: str) -> int:
    """Copy a file's LoRA ``modules`` into the ``live`` adapters of the same keys: every module must find a
    plain LoRA adapter of its rank (checked before anything changes); ``up`` is rescaled so the file's ΔW
    is reproduced at the adapter's scale. Returns the number of modules loaded."""
    problems, plan = [], []
    for key, tensors in modules.items():
        ad = live.get(key)
        if ad is None or not hasattr(ad, "lora_A") or set(tensors) - {"lora_down.weight", "lora_up.weight", "alpha"}:
            problems.append(f"{key}: no plain LoRA module of this network takes it")
        elif tensors["lora_down.weight"].numel() != ad.lora_A.numel() or \
                tensors["lora_up.weight"].numel() != ad.lora_B.numel():
            problems.append(f"{key}: rank {tensors['lora_down.weight'].shape[0]} in the file, {ad.r} here")
        else:
            plan.append((ad, tensors))
    if problems:
        raise ValueError(f"network.network_weights={path}: {len(problems)} module(s) do not fit this network "
                         "(same targets, module and dim needed):\n  - " + "\n  - ".join(problems[:20]))
    with torch.no_grad():
        for ad, t in plan:
            r = t["lora_down.weight"].shape[0]
            alpha = float(t["alpha"]) if "alpha" in t and float(t["alpha"]) else r
            ad.lora_A.copy_(t["lora_down.weight"].reshape(ad.lora_A.shape))
            ad.lora_B.copy_(t["lora_up.weight"].reshape(ad.lora_B.shape) * (alpha / r) / ad.scale)
    return len(plan)


def to_lorafile(parts: dict, family_name: str, metadata: dict[str, str] | None = None) -> LoraFile:
    """The trained adapters as a ``LoraFile`` (kohya names: diffusers-style U-Net for SD1/2, SAI for SDXL)."""
    modules = {}
    for part, model in parts.items():
        if part not in ("unet", "text_encoder", "text_encoder_2") or not isinstance(model, nn.Module):
            continue
        for path, layer in lora_layers(model):
            if ADAPTER in layer.adapters:
                key = path if part == "unet" else canonical_te(path)
                modules[f"{part}.{key}"] = adapter_tensors(layer.adapters[ADAPTER])
    sdxl = family_name == "sdxl"
    naming = Naming("sai" if sdxl else "diffusers", sdxl, layout_from_config(parts["unet"].config))
    return LoraFile(modules, dict(metadata or {}), naming, source="lorakit")
