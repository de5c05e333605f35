"""FLUX.1 / SD3 LoRA files in the kohya, diffusers/PEFT and ComfyUI key styles (names: :mod:`.dit_keys`).

=========  ===================================================================  ==================================
style      transformer key                                                       text encoders (te1/te2/te3)
=========  ===================================================================  ==================================
kohya      ``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`` + alpha   ``lora_te1_``/``lora_te2_``/``lora_te3_``
peft       ``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``          ``text_encoder[_2|_3].<path>``
comfy      ``diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight``     ``text_encoders.clip_l|clip_g|t5xxl.transformer.``
=========  ===================================================================  ==================================

kohya and ComfyUI name the original fused layout, diffusers the split one (:mod:`.dit_layout`
converts). diffusers keeps r and lora_alpha as JSON in the header entry ``lora_adapter_metadata``
(``{"transformer.r": 16, "transformer.lora_alpha": 16, ...}``); the other styles keep a 0-d
``alpha`` per module. Read also: PEFT ``lora_magnitude_vector`` (DoRA), LyCORIS ``dora_scale``,
``hada_*``/``lokr_*``/``diff`` tensors in any style, and flattened diffusers names
(``lycoris_`` from SimpleTuner, ``lora_transformer_`` from OneTrainer).
"""

from __future__ import annotations

import json
import re

import torch

from . import kohya
from ._io import write_safetensors
from .dit_keys import (
    COMFY_PREFIX,
    DIT_FAMILIES,
    FAMILY_META,
    FUSED_ROOTS,
    KOHYA_PREFIX,
    PIPE_PARTS,
    TRANSFORMER,
    UNKNOWN,
    families_of,
    te_kind,
    te_path,
    transformer_path,
)
from .dit_layout import to_fused, to_split
from .errors import LoraFileError, LoraKeyError
from .lorafile import SUFFIXES, LoraFile, Naming
from .peft_sd import SUFFIX_TABLE, _alpha_configs, fill_alphas, peft_config

STYLES = ("kohya", "peft", "comfy")
#: any style's tensor suffix -> the kohya/LyCORIS suffix LoraFile keeps
SUFFIX = {**{s: s for s in SUFFIXES}, **SUFFIX_TABLE}
_SUFFIX_RE = re.compile(r"\.(" + "|".join(re.escape(s) for s in sorted(SUFFIX, key=len, reverse=True)) + ")$")
#: kohya-style name prefixes -> part (``lora_te2_`` with T5 names is OneTrainer's Flux T5, read as te3)
_KOHYA = (("lora_unet_", TRANSFORMER), ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te3_", "te3"),
          ("lora_te_", "te1"))
_FLAT_SPLIT = ("lycoris_", "lora_transformer_")
_SD_TOO = ("lora_te_", "lora_te1_", "lora_te2_", "unet.", "text_encoder.", "text_encoder_2.", "base_model.")
_PEFT_TE = {"text_encoder": "te1", "text_encoder_2": "te2", "text_encoder_3": "te3"}
_COMFY_TE = {v: k for k, v in COMFY_PREFIX.items() if k != TRANSFORMER}


def _te(part: str, path: str, flat: bool) -> tuple[str, str]:
    """(part, canonical path) of a text-encoder module; T5 names under a CLIP slot go to te3 only for te2."""
    kind = te_kind(path)
    if part == "te2" and kind == "t5":
        part = "te3"
    if (part == "te3") != (kind == "t5"):
        raise KeyError(f"{path!r} is a {kind.upper()} module but its prefix names {part} "
                       "(te1 = CLIP-L, te2 = CLIP-G, te3 = T5)")
    return part, te_path(path, flat)


def parse_key(key: str) -> tuple[str, str, str, str]:
    """(part, module path, kohya suffix, style) of one tensor key; KeyError naming what does not map."""
    m = _SUFFIX_RE.search(key)
    if not m:
        raise KeyError(f"{key}: unknown tensor suffix (known: {', '.join(sorted(SUFFIX))})")
    module, suffix = key[: m.start()], SUFFIX[m.group(1)]
    try:
        for prefix, part in _KOHYA:
            if module.startswith(prefix):
                flat = module[len(prefix):]
                if part == TRANSFORMER:
                    return part, transformer_path(flat, fused=True, flat=True), suffix, "kohya"
                return (*_te(part, flat, True), suffix, "kohya")
        for prefix in _FLAT_SPLIT:
            if module.startswith(prefix):
                return TRANSFORMER, transformer_path(module[len(prefix):], fused=False, flat=True), suffix, "peft"
        if module.startswith(COMFY_PREFIX[TRANSFORMER]):
            return TRANSFORMER, transformer_path(module[len(COMFY_PREFIX[TRANSFORMER]):], fused=True), suffix, "comfy"
        for prefix, part in _COMFY_TE.items():
            if module.startswith(prefix):
                return (*_te(part, module[len(prefix):], False), suffix, "comfy")
        attr, _, path = module.partition(".")
        if attr == TRANSFORMER:
            return TRANSFORMER, transformer_path(path, fused=False), suffix, "peft"
        if attr in _PEFT_TE:
            return (*_te(_PEFT_TE[attr], path, False), suffix, "peft")
    except KeyError as exc:
        raise KeyError(f"{key}: {exc.args[0]}") from None
    raise KeyError(f"{key}: no FLUX.1/SD3 key prefix (lora_unet_, lora_te1_/2_/3_, transformer., text_encoder., "
                   "diffusion_model., text_encoders.)")


def is_dit(keys) -> bool:
    """Whether a file's keys name FLUX.1/SD3 modules (a transformer or T5 module; SD U-Net files never do)."""
    for key in keys:
        if key.startswith(_SD_TOO) or (key.startswith("lora_unet_") and not key[10:].startswith(FUSED_ROOTS)):
            continue  # CLIP-only prefixes and SD U-Net names: skip the table lookups (SD files have thousands)
        try:
            part = parse_key(key)[0]
        except KeyError:
            continue
        if part in (TRANSFORMER, "te3"):
            return True
    return False


def meta_family(metadata: dict[str, str]) -> str | None:
    """The family kohya/lorakit metadata names (modelspec.architecture, ss_base_model_version)."""
    arch = metadata.get("modelspec.architecture", "")
    version = metadata.get("ss_base_model_version", "")
    if arch.startswith(("flux-1", "chroma")) or version.startswith(("flux1", "chroma")):
        return "flux1"
    if arch.startswith("stable-diffusion-3") or version.startswith("sd3"):
        return "sd3"
    return None


def from_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                    source: str = "state dict") -> LoraFile:
    """Group a FLUX.1/SD3 file's keys by module; every unmappable key is reported in one ``LoraKeyError``."""
    metadata = dict(metadata or {})
    modules: dict[str, dict[str, torch.Tensor]] = {}
    problems, styles, layouts, fams, attrs = [], set(), set(), None, {}
    for key, t in tensors.items():
        if not t.is_floating_point():
            problems.append(f"{key}: dtype {t.dtype} is not a float type (expected fp32, fp16 or bf16)")
            continue
        try:
            part, path, suffix, style = parse_key(key)
        except KeyError as exc:
            problems.append(exc.args[0])
            continue
        styles.add(style)
        if part == TRANSFORMER:
            layouts.add(style != "peft")
            here = families_of(path, fused=style != "peft")
            fams = here if fams is None else fams & here
            if not fams:
                problems.append(f"{key}: a {'/'.join(sorted(here))} module in a file whose other modules are not")
                fams = here
        elif style == "peft":
            attrs[key.partition(".")[0]] = part
        modules.setdefault(f"{part}.{path}", {})[suffix] = t
    if len(layouts) > 1:
        problems.append("the file mixes original (fused) and diffusers (split) transformer names; "
                        "it would apply some updates twice")
    if problems:
        raise LoraKeyError(source, problems, f"{len(problems)} key(s) could not be mapped; nothing was loaded. "
                           "Expected kohya, diffusers/PEFT or ComfyUI names of a FLUX.1 or SD3 LoRA.")
    family = _family(fams, modules, metadata, source)
    if "peft" in styles:
        parts = {"transformer": TRANSFORMER, **attrs}
        configs = _alpha_configs(metadata, None, TRANSFORMER, source, parts=tuple(parts))
        fill_alphas(modules, {parts[a]: c for a, c in configs.items()}, metadata, source)
    naming = Naming(dit=family, fused=bool(layouts == {True} or (not layouts and "peft" not in styles)))
    style = "peft" if "peft" in styles else "comfy" if "comfy" in styles else "kohya"
    return LoraFile(modules, metadata, naming, source=style)


def _family(fams: set | None, modules: dict, metadata: dict, source: str) -> str:
    said = meta_family(metadata)
    if fams is None:  # text encoders only: CLIP-G is SD3's
        fams = {"sd3"} if any(k.startswith("te2.") for k in modules) else set(DIT_FAMILIES)
    if said is not None and said not in fams:
        raise LoraFileError(source, f"metadata says the file is for {said} but its module names are "
                            f"{'/'.join(sorted(fams))} ones; fix or remove the metadata.")
    return said or (fams.pop() if len(fams) == 1 else UNKNOWN)


# -- writing -------------------------------------------------------------------------------------------
def _key(style: str, part: str, path: str) -> str:
    if style == "kohya":
        return f"{KOHYA_PREFIX[part]}_{path.replace('.', '_')}"
    return COMFY_PREFIX[part] + path


def to_state_dict(lf: LoraFile, to: str, family: str | None = None, dtype: torch.dtype | None = None
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """(tensors, metadata, notes) of ``lf`` in style ``to``; notes name modules whose rank a fuse raised."""
    if to not in STYLES:
        raise ValueError(f"to={to!r}: expected one of {STYLES}.")
    family = family or lf.family()
    if family is not None and family not in DIT_FAMILIES:
        raise ValueError(f"family={family!r}: expected one of {DIT_FAMILIES}.")
    if to == "peft":
        return (*_peft(to_split(lf), family, dtype), [])
    fused, notes = to_fused(lf, family)
    family = fused.family()
    tensors = {f"{_key(to, *key.split('.', 1))}.{s}": (t if dtype is None else t.to(dtype))
               for key, m in fused.modules.items() for s, t in m.items()}
    return tensors, _metadata(fused, family), notes


#: metadata that describes the tensors written, recomputed on every write
STALE = ("ss_network_dim", "ss_network_alpha", "sshs_model_hash", "sshs_legacy_hash", "lora_adapter_metadata")


def _metadata(lf: LoraFile, family: str | None) -> dict[str, str]:
    meta = {k: v for k, v in lf.metadata.items() if k not in STALE and not k.startswith("lorakit.")}
    if family in FAMILY_META:
        meta.setdefault("ss_base_model_version", FAMILY_META[family][0])
        meta.setdefault("modelspec.architecture", FAMILY_META[family][1])
        meta.setdefault("ss_network_module", f"networks.lora_{'flux' if family == 'flux1' else 'sd3'}")
    return kohya.kohya_metadata(LoraFile(lf.modules, meta, lf.naming), family="")


def _peft(lf: LoraFile, family: str | None, dtype) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    attrs = PIPE_PARTS.get(family) or {"transformer": "transformer", "te1": "text_encoder", "te2": "text_encoder_2"}
    bad = [k for k, m in lf.modules.items() if set(m) - {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"}]
    missing = sorted(lf.parts() - set(attrs))
    if bad or missing:
        raise ValueError(f"{lf.path or 'this LoRA'}: " + (
            f"{len(bad)} module(s) are not LoRA/DoRA ({bad[:3]}), which diffusers' PEFT format cannot hold; keep "
            "them as kohya or ComfyUI files." if bad else
            f"part(s) {missing} need the family to be named (--family flux1|sd3): T5 is text_encoder_2 in FLUX.1 "
            "and text_encoder_3 in SD3."))
    tensors, configs = {}, {}
    for part in sorted(lf.parts()):
        mods = {k.split(".", 1)[1]: m for k, m in lf.modules.items() if k.split(".", 1)[0] == part}
        dora = {"dora_scale" in m for m in mods.values()}
        if len(dora) > 1:
            raise ValueError(f"{lf.path or 'this LoRA'}: the {part} modules mix DoRA and plain LoRA; a PEFT config "
                             "holds one or the other. Keep this file as kohya or ComfyUI.")
        # target names without CLIP's text_model level match with and without it (transformers 5 dropped it
        # from CLIPTextModel); diffusers strips it from the tensor keys itself
        configs[attrs[part]] = peft_config({p.removeprefix("text_model."): m for p, m in mods.items()},
                                           use_dora=dora.pop())
        for path, m in mods.items():
            prefix = f"{attrs[part]}.{path}."
            tensors[prefix + "lora_A.weight"] = m["lora_down.weight"]
            tensors[prefix + "lora_B.weight"] = m["lora_up.weight"]
            if "dora_scale" in m:
                tensors[prefix + "lora_magnitude_vector"] = m["dora_scale"].reshape(-1)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    alphas = [m["alpha"] for m in lf.modules.values() if "alpha" in m]
    meta = {**_metadata(lf, family if family in DIT_FAMILIES else None),
            "lora_adapter_metadata": json.dumps({f"{a}.{k}": v for a, c in configs.items() for k, v in c.items()},
                                                sort_keys=True),
            "lorakit.alpha_dtype": str(alphas[0].dtype).removeprefix("torch.") if alphas else "float32"}
    for stale in ("sshs_model_hash", "sshs_legacy_hash"):  # kohya's hashes are of kohya files
        meta.pop(stale, None)
    return tensors, meta


def write_dit(lf: LoraFile, path, to: str = "kohya", dtype: str | torch.dtype | None = None,
              family: str | None = None) -> list[str]:
    """Write ``lf`` in style ``to`` (atomically); returns notes on modules whose rank a fuse raised."""
    if isinstance(dtype, str):
        if dtype not in kohya.DTYPES:
            raise ValueError(f"dtype={dtype!r}: expected one of {sorted(kohya.DTYPES)}.")
        dtype = kohya.DTYPES[dtype]
    tensors, meta, notes = to_state_dict(lf, to, family, dtype)
    if to != "peft":
        meta["sshs_model_hash"], meta["sshs_legacy_hash"] = kohya.sshs_hashes(tensors, meta)
    write_safetensors(path, tensors, meta)
    return notes
