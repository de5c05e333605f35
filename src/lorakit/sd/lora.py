"""Apply LoRA files to diffusers models, ComfyUI-style: SD1/SD2/SDXL U-Nets and FLUX.1/SD3 transformers.

    names = lorakit.sd.load_lora(pipe, ["style.safetensors", "char.safetensors"],
                                 unet_strength=[0.8, 1.0], te_strength=[0.5, 1.0])

Each file becomes a live lorakit adapter on the U-Net (or DiT transformer) and text encoders
(switchable with ``lorakit.set_active_adapters``, mergeable and unmergeable), or, with
``mode="merge"``, is added into the weights: W += strength·ΔW, computed in fp32 and cast back
(ComfyUI's rule, so stacked files add linearly). ``unet_strength`` is the transformer's strength
on FLUX.1/SD3 (ComfyUI's ``strength_model``), ``te_strength`` every text encoder's (``strength_clip``).
Plain LoRA/LoCon modules keep their factors, DoRA modules with one magnitude per output row run as
lorakit DoRA adapters; LoHa, LoKr, old-layout DoRA and full modules run as a frozen dense ΔW. A
FLUX.1/SD3 file's fused modules (``img_attn.qkv``, ``linear1``) are split exactly onto diffusers'
q/k/v/mlp modules (:mod:`.dit_lora`). A 4-bit base (``lorakit.quant``) takes live adapters as is; a
merge replaces such a layer by a dense one holding dequant(W) + ΔW. Every file module must find its
model module, and the file's model family must match the model's: an SD1.5 file on SDXL (or a Flux
file on SD3) is refused with the reason, before anything changes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..adapters import spec_for
from ..adapters.delta import DeltaAdapter
from ..adapters.dora import DoraAdapter
from ..adapters.lora import LoraAdapter
from ..formats.lorafile import LoraFile, alpha_of, model_family
from ..formats.lycoris import delta_weight
from ..formats.sd_io import read_lora
from ..formats.sd_keys import SDXL, layout_from_config, te_alternatives
from ..formats.validate import require_finite
from ..inject import _set_module
from ..layer import LoraLayer
from ..model import active_adapters, adapter_names, delete_adapter, set_active_adapters
from .dit_lora import on_model, pipeline_parts

PARTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
MODEL_PARTS = ("unet", "transformer")  # the denoiser: unet_strength applies; every other part is a text encoder
MODES = ("adapter", "merge")


def model_parts(target) -> dict[str, nn.Module]:
    """{part: module} of a diffusers pipeline (attributes) or a dict; absent parts are left out."""
    if isinstance(target, dict):
        parts = {k: v for k, v in target.items() if v is not None}
    else:
        parts = {p: getattr(target, p) for p in PARTS if getattr(target, p, None) is not None}
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f"expected a diffusers pipeline or a dict with keys among {PARTS}; got {sorted(parts)}.")
    return parts


def check_family(lf: LoraFile, parts: dict[str, nn.Module], label: str) -> None:
    """Refuse a file made for another base model family (the usual cause of 'lora key not loaded')."""
    denoiser = parts.get("unet", parts.get("transformer"))
    if denoiser is None or not hasattr(denoiser, "config"):
        return
    want, have = lf.family(), model_family(denoiser)
    if lf.naming.dit and want is None:  # a DiT file whose names fit FLUX.1 and SD3: the model decides
        want = have if have in ("flux1", "sd3") else "flux1/sd3"
    if want is not None and want != have:
        raise ValueError(f"{label} is a LoRA for {want.upper()} but the model is {have.upper()} "
                         f"(metadata ss_base_model_version={lf.metadata.get('ss_base_model_version')!r}). "
                         "LoRAs only work on the model family they were trained for; pick a matching LoRA or model.")


def _resolve(parts, key: str) -> tuple[str, nn.Module] | None:
    """(model path, module) for a file key; text-encoder paths try both CLIP spellings."""
    part, path = key.split(".", 1)
    for cand in te_alternatives(path) if part not in MODEL_PARTS else [path]:
        try:
            return cand, parts[part].get_submodule(cand)
        except AttributeError:
            continue
    return None


def _module(parts, key: str):
    found = _resolve(parts, key)
    if found is None:
        return None
    module = found[1]
    return module.base_layer if isinstance(module, LoraLayer) else module


def _plan(lf: LoraFile, parts, strengths: dict[str, float], label: str,
          keep: bool = True) -> list[tuple[str, nn.Module, object]]:
    """(key, base module, prepared update) for every file module, or one error naming the file and listing
    every module that cannot be placed (a missing module, or factors of another shape: the file is for
    another base model). The update is ``(down, up)`` for plain LoRA/LoCon (and row DoRA), else the dense
    ΔW (checked, then dropped unless ``keep``: merging computes one at a time)."""
    plan, problems = [], []
    for key in lf.modules:
        part = key.split(".", 1)[0]
        if strengths[part] == 0:
            continue
        if part not in parts:
            problems.append(f"{key}: the model has no {part} (pass its strength as 0 to load the other parts only)")
            continue
        module = _module(parts, key)
        if module is None or not hasattr(module, "weight"):
            problems.append(f"{key}: no such module in the {part}")
            continue
        try:
            prepared = _prepare(lf.modules[key], module, key)
            plan.append((key, module, prepared if keep or not isinstance(prepared, torch.Tensor) else None))
        except ValueError as e:
            problems.append(str(e))
    if problems:
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise ValueError(f"{label}: {len(problems)} module(s) do not fit this model; nothing was changed:\n  - "
                         + "\n  - ".join(problems[:40]) + more)
    return plan


def _factors(module: dict, base: nn.Module, key: str):
    """(down, up) reshaped to the base layer (a 1x1-conv file on a Linear layer and back), or None."""
    if set(module) - {"lora_down.weight", "lora_up.weight", "alpha"}:
        return None
    down, up = module["lora_down.weight"], module["lora_up.weight"]
    w = base.weight
    if w.dim() == 2 and down.dim() == 4 and down.shape[2:] == (1, 1):
        down, up = down.flatten(1), up.flatten(1)
    elif w.dim() == 4 and down.dim() == 2 and w.shape[2:] == (1, 1):
        down, up = down[:, :, None, None], up[:, :, None, None]
    if down.dim() != w.dim() or up.shape[0] != w.shape[0] or down.shape[1:] != w.shape[1:]:
        raise ValueError(f"{key}: factors down {tuple(down.shape)} / up {tuple(up.shape)} do not fit the model "
                         f"weight {tuple(w.shape)} (is the file for another base model?)")
    return down, up


def _row_dora(module: dict, base: nn.Module) -> bool:
    """A Linear DoRA module with one magnitude per output row (LyCORIS' wd_on_output layout)."""
    dora = module.get("dora_scale")
    return dora is not None and spec_for(base).kind == "linear" and dora.numel() == base.weight.shape[0]


def _prepare(module: dict, base: nn.Module, key: str):
    row = _row_dora(module, base)
    factors = _factors({s: t for s, t in module.items() if s != "dora_scale"} if row else module, base, key)
    return factors if factors is not None else delta_weight(module, base.weight, key)


def _adapter(prepared, base: nn.Module, module: dict):
    w = base.weight
    spec = spec_for(base)
    if isinstance(prepared, torch.Tensor):
        return DeltaAdapter(spec, prepared.to(w.dtype))
    down, up = prepared
    row_dora = _row_dora(module, base)
    dora = module.get("dora_scale")
    r = down.shape[0]
    alpha = alpha_of(module)
    cls = DoraAdapter if row_dora else LoraAdapter
    with torch.device("meta"):  # shapes only: the file's tensors become the parameters
        ad = cls(spec, r=r, alpha=alpha if alpha is not None else r, init=None)
    ad.lora_A = nn.Parameter(down.to(w.device, w.dtype), requires_grad=False)
    ad.lora_B = nn.Parameter(up.to(w.device, w.dtype), requires_grad=False)
    if row_dora:  # W' = m·(W + s·BA)/‖W + s·BA‖ per row: the LyCORIS wd_on_output file layout
        ad.magnitude = nn.Parameter(dora.reshape(-1).to(w.device, w.dtype), requires_grad=False)
    return ad


def _per_file(value, n: int, what: str) -> list[float]:
    values = [value] * n if isinstance(value, (int, float)) else list(value)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} values for {n} file(s); give one number or one per file.")
    return [float(v) for v in values]


def load_lora(target, files, *, names: list[str] | None = None, unet_strength=1.0, te_strength=1.0,
              mode: str = "adapter", layout=None) -> list[str]:
    """Load LoRA files onto ``target`` (a diffusers pipeline or ``{part: module}``); return adapter names.

    ``files`` is a path, a ``LoraFile`` or a list of them; strengths are one number or one per file.
    ``mode="adapter"`` adds live adapters named ``names`` (default: file stems) and activates them
    beside those already active; ``mode="merge"`` adds strength·ΔW into the weights.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}.")
    files = files if isinstance(files, (list, tuple)) else [files]
    parts = model_parts(target)
    if layout is None:
        layout = layout_from_config(parts["unet"].config) if hasattr(parts.get("unet"), "config") else SDXL
    loaded = [f if isinstance(f, LoraFile) else read_lora(f, layout) for f in files]
    labels = [str(f) if not isinstance(f, LoraFile) else f.path or f"file {i}" for i, f in enumerate(files)]
    if names is None:  # file stems, made safe as module names ("half.safetensors" must not shadow .half())
        names = [Path(f).stem.replace(".", "_") if not isinstance(f, LoraFile) else f"lora_{i}"
                 for i, f in enumerate(files)]
        names = [f"lora_{n}" if hasattr(nn.ModuleDict(), n) else n for n in names]
    bad = [n for n in names if "." in n or not n or hasattr(nn.ModuleDict(), n)]
    if len(names) != len(loaded) or len(set(names)) != len(names) or bad:
        raise ValueError(f"names={names}: expected {len(loaded)} distinct adapter names without dots that are not "
                         f"torch.nn.Module attributes (bad: {bad}).")
    us, ts = _per_file(unet_strength, len(loaded), "unet_strength"), _per_file(te_strength, len(loaded), "te_strength")
    plans, placed = [], []
    for lf, label, u, t in zip(loaded, labels, us, ts, strict=True):  # check everything before changing anything
        check_family(lf, parts, label)
        require_finite(lf, f"applying {label}")
        lf = on_model(lf, parts, label) if lf.naming.dit else lf
        strengths = {p: u if p in MODEL_PARTS else t for p in PARTS}
        plans.append(_plan(lf, parts, strengths, label, mode != "merge"))
        placed.append((lf, strengths))
    for (lf, strengths), plan, name in zip(placed, plans, names, strict=True):
        if mode == "merge":
            _merge_file(lf, plan, parts, strengths)
        else:
            _add_adapters(lf, plan, parts, name, strengths)
    return names


def file_parts(lf: LoraFile, parts: dict[str, nn.Module]) -> set[str]:
    """The model parts (pipeline attributes) a file's modules land on."""
    return pipeline_parts(lf, parts) if lf.naming.dit else lf.parts() & set(parts)


@torch.no_grad()
def _merge_file(lf: LoraFile, plan, parts, strengths) -> None:
    for key, base, _ in plan:
        if getattr(base, "is_quantized", False):  # a 4-bit weight cannot hold W + ΔW: write a dense layer
            base = _replace_base(parts, key, base.dequantized_linear())
        w = base.weight
        delta = delta_weight(lf.modules[key], w, key)
        # copy_, not .data.copy_: bumps the version counter that live DoRA adapters key their norm cache on
        w.copy_((w.float() + strengths[key.split(".", 1)[0]] * delta.to(w.device)).to(w.dtype))


def _replace_base(parts, key: str, new: nn.Module) -> nn.Module:
    path, current = _resolve(parts, key)
    if isinstance(current, LoraLayer):
        current.base_layer = new
    else:
        _set_module(parts[key.split(".", 1)[0]], path, new)
    return new


def _add_adapters(lf: LoraFile, plan, parts, name: str, strengths) -> None:
    existing = {n for m in parts.values() for mod in m.modules() if isinstance(mod, LoraLayer) for n in mod.adapters}
    if name in existing:
        raise ValueError(f"adapter {name!r} is already loaded; pass another name or delete it first.")
    for key, base, prepared in plan:
        part = key.split(".", 1)[0]
        model = parts[part]
        path, current = _resolve(parts, key)
        layer = current if isinstance(current, LoraLayer) else LoraLayer(current)
        adapter = _adapter(prepared, base, lf.modules[key])
        adapter.train(base.training)
        layer.adapters[name] = adapter
        if layer is not current:
            layer.train(base.training)
            _set_module(model, path, layer)
    used = {key.split(".", 1)[0] for key, _, _ in plan}
    for part in used:
        set_active_adapters(parts[part], {**active_adapters(parts[part]), name: strengths[part]})


def unload_lora(target, name: str) -> None:
    """Remove adapter ``name`` (loaded by :func:`load_lora`) from every model part that has it."""
    parts = model_parts(target)
    holders = [m for m in parts.values() if name in adapter_names(m)]
    if not holders:
        raise ValueError(f"no adapter {name!r} is loaded; loaded: "
                         f"{sorted({n for m in parts.values() for n in adapter_names(m)})}.")
    for model in holders:
        delete_adapter(model, name)
