"""FLUX.1 / SD3 LoRA files on diffusers models: file parts -> pipeline parts, and live adapters -> a file.

A DiT ``LoraFile`` (:mod:`lorakit.formats.dit_io`) names its parts ``transformer``/``te1``/``te2``/``te3``
and may hold fused modules (``double_blocks.0.img_attn.qkv``). :func:`on_model` turns it into what
:func:`lorakit.sd.load_lora` places on a pipeline: diffusers' split modules (exact row slices; a
module whose factors cannot be sliced becomes its dense ΔW rows) under the pipeline's attribute
names (FLUX.1: ``text_encoder`` = CLIP-L, ``text_encoder_2`` = T5; SD3: CLIP-L, CLIP-G, T5).
:func:`lora_file_from_model` is the way back: the live adapters of a model as a ``LoraFile`` that
``write_lora`` saves in any format (what a trainer writes).
"""

from __future__ import annotations

from torch import nn

from ..formats.dit_keys import DIT_FAMILIES, PIPE_PARTS, TRANSFORMER, split_entry, te_path
from ..formats.dit_layout import to_split
from ..formats.lorafile import LoraFile, Naming, adapter_tensors, model_family
from ..model import lora_layers


def pipeline_family(parts: dict[str, nn.Module]) -> str | None:
    """``flux1``/``sd3`` for parts holding a FLUX.1/Chroma/SD3 transformer, else None."""
    model = parts.get(TRANSFORMER)
    family = model_family(model) if model is not None else None
    return family if family in DIT_FAMILIES else None


def pipeline_parts(lf: LoraFile, parts: dict[str, nn.Module]) -> set[str]:
    """The pipeline attributes a DiT file's parts land on (``te3`` is ``text_encoder_2`` on FLUX.1)."""
    table = PIPE_PARTS.get(pipeline_family(parts) or lf.family() or "", {})
    return {table[p] for p in lf.parts() if p in table} & set(parts)


def on_model(lf: LoraFile, parts: dict[str, nn.Module], label: str) -> LoraFile:
    """The file's modules in diffusers' layout under pipeline part names, ready to place on ``parts``."""
    family = pipeline_family(parts)
    if family is None:
        raise ValueError(f"{label} is a LoRA for {lf.family() or 'FLUX.1/SD3'} (a DiT transformer) but the model "
                         "has no FLUX.1/SD3 transformer; pick a matching model.")
    if lf.family() not in (None, family):
        raise ValueError(f"{label} is a LoRA for {lf.family()} but the model is {family}; LoRAs only work on the "
                         "model family they were trained for.")
    if lf.family() is None:  # names that fit both families: the model says which
        lf = LoraFile(lf.modules, lf.metadata, Naming(**{**vars(lf.naming), "dit": family}), lf.source, lf.path)
    table = PIPE_PARTS[family]
    missing = sorted(p for p in lf.parts() if p not in table)
    if missing:
        raise ValueError(f"{label}: part(s) {missing} do not exist on a {family} pipeline (FLUX.1 has CLIP-L = te1 "
                         "and T5 = te3; SD3 adds CLIP-G = te2).")
    split = to_split(lf, dense=True)
    modules = {f"{table[k.split('.', 1)[0]]}.{k.split('.', 1)[1]}": m for k, m in split.modules.items()}
    return LoraFile(modules, dict(lf.metadata), Naming(dit=family), source=lf.source, path=lf.path)


def lora_file_from_model(target, adapter: str = "default", family: str | None = None,
                         metadata: dict[str, str] | None = None) -> LoraFile:
    """The live adapter ``adapter`` of a FLUX.1/SD3 pipeline (or ``{attribute: module}``) as a ``LoraFile``
    in diffusers' layout (``write_lora`` fuses it for kohya/ComfyUI output). Raises on modules no
    format names (so a file is never written that loaders would drop parts of)."""
    parts = target if isinstance(target, dict) else {a: getattr(target, a) for a in
                                                      ("transformer", "text_encoder", "text_encoder_2",
                                                       "text_encoder_3") if getattr(target, a, None) is not None}
    family = family or pipeline_family(parts)
    if family not in DIT_FAMILIES:
        raise ValueError(f"family={family!r}: expected one of {DIT_FAMILIES} (or a pipeline with a FLUX.1/SD3 "
                         "transformer to tell it).")
    attr_to_part = {a: p for p, a in PIPE_PARTS[family].items()}
    modules, problems = {}, []
    for attr, model in parts.items():
        if attr not in attr_to_part or not isinstance(model, nn.Module):
            continue
        part = attr_to_part[attr]
        for path, layer in lora_layers(model):
            if adapter not in layer.adapters:
                continue
            try:
                name = split_entry(family, path)[3] if part == TRANSFORMER else te_path(path)
            except KeyError as exc:
                problems.append(f"{attr}.{path}: {exc.args[0]}")
                continue
            modules[f"{part}.{name}"] = adapter_tensors(layer.adapters[adapter])
    if problems:
        raise ValueError(f"{len(problems)} adapted module(s) have no name in the kohya/diffusers/ComfyUI "
                         "formats:\n  - " + "\n  - ".join(problems[:20]))
    if not modules:
        raise ValueError(f"no module of the model has an adapter named {adapter!r}.")
    return LoraFile(modules, dict(metadata or {}), Naming(dit=family, fused=False), source="lorakit")
