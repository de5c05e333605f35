"""kohya sd-scripts / LyCORIS ``.safetensors`` LoRA files (what A1111 and ComfyUI load).

Keys are ``<lora_name>.<suffix>``: ``lora_name`` comes from :mod:`.sd_keys`, the suffix from
``lorafile.SUFFIXES`` (``lora_down.weight`` (r, in[, k, k]), ``lora_up.weight`` (out, r[, 1, 1]),
0-d ``alpha``; LyCORIS ``hada_*``/``lokr_*``/``dora_scale``). Metadata is ``ss_*`` (kohya),
``modelspec.*`` (SAI) and the ``sshs_*`` hashes A1111 shows. All values are strings.
"""

from __future__ import annotations

import hashlib
import io

import torch
from safetensors.torch import save as st_save

from ._io import read_safetensors, write_safetensors
from .errors import LoraFileError, LoraKeyError
from .lorafile import SUFFIXES, LoraFile, Naming, alpha_of, rank_of
from .sd_keys import SDXL, UnetLayout, from_kohya, to_kohya
from .validate import check_lora

#: family -> (ss_base_model_version, ss_v2, modelspec.architecture)
FAMILY_META = {"sd1": ("sd_v1", "False", "stable-diffusion-v1/lora"),
               "sd2": ("sd_v2", "True", "stable-diffusion-v2-512/lora"),
               "sdxl": ("sdxl_base_v1-0", "False", "stable-diffusion-xl-v1-base/lora")}
DTYPES = {"fp32": torch.float32, "float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def is_kohya(keys) -> bool:
    return all(k.split("_", 1)[0] in ("lora", "lycoris") and "." in k for k in keys) and bool(keys)


def from_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                    layout: UnetLayout = SDXL, source: str = "kohya state dict") -> LoraFile:
    """Group kohya keys by module; every unknown suffix, prefix or block is reported in one error
    (``LoraKeyError`` naming ``source``). Module consistency is :func:`.validate.check_lora`'s job."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    styles, te_split, problems = set(), False, []
    for key, t in tensors.items():
        name, _, suffix = key.partition(".")
        if suffix not in SUFFIXES:
            problems.append(f"{key}: unknown tensor suffix {suffix!r} (known: {', '.join(sorted(SUFFIXES))})")
            continue
        if t.dtype not in FLOAT_DTYPES:
            problems.append(f"{key}: dtype {t.dtype} is not a float type (expected fp32, fp16 or bf16)")
            continue
        try:
            part, path, style = from_kohya(name, layout)
        except KeyError as exc:
            problems.append(f"{key}: {exc.args[0]}")
            continue
        styles.add(style) if style else None
        te_split |= name.startswith(("lora_te1_", "lora_te2_"))
        modules.setdefault(f"{part}.{path}", {})[suffix] = t
    if len(styles) > 1:
        problems.append("the file mixes diffusers-style (down_blocks) and SAI-style (input_blocks) U-Net names")
    if problems:
        raise LoraKeyError(source, problems, f"{len(problems)} key(s) could not be mapped; nothing was loaded. "
                           "Expected kohya names for a Stable Diffusion U-Net/text encoder (lorakit inspect lists "
                           "what a file holds).")
    naming = Naming(unet_style=styles.pop() if styles else "diffusers", te_split=te_split, layout=layout)
    return LoraFile(modules, dict(metadata or {}), naming, source="kohya")


def to_state_dict(lf: LoraFile, dtype: torch.dtype | None = None, naming: Naming | None = None
                  ) -> dict[str, torch.Tensor]:
    """kohya keys for every module; ``dtype`` casts all tensors (alpha too, as kohya does)."""
    naming = naming or lf.naming
    te_split = naming.te_split or "text_encoder_2" in lf.parts()  # SDXL files say te1/te2, never te + te2
    out = {}
    for key, tensors in lf.modules.items():
        part, path = key.split(".", 1)
        name = to_kohya(part, path, sai=naming.unet_style == "sai", te_split=te_split,
                        layout=naming.layout)
        for suffix, t in tensors.items():
            out[f"{name}.{suffix}"] = t if dtype is None else t.to(dtype)
    return out


def sshs_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """kohya's (sshs_model_hash, sshs_legacy_hash): sha256 of the tensor bytes after the header, and
    8 hex digits of sha256 over 64 KiB at offset 1 MiB, of the file serialised with ``ss_*`` metadata only."""
    data = st_save({k: v.contiguous() for k, v in tensors.items()},
                   metadata={k: v for k, v in metadata.items() if k.startswith("ss_")} or None)
    n = int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[8 + n:]).hexdigest()
    buf = io.BytesIO(data)
    buf.seek(0x100000)
    legacy = hashlib.sha256(buf.read(0x10000)).hexdigest()[:8]
    return model_hash, legacy


def network_dims(lf: LoraFile) -> tuple[str, str]:
    """``ss_network_dim``/``ss_network_alpha``: the common value, or "Dynamic" when modules differ."""
    ranks = {rank_of(t) for t in lf.modules.values()} - {None}
    alphas = {alpha_of(t) if alpha_of(t) is not None else rank_of(t) for t in lf.modules.values()} - {None}
    dim = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
    alpha = f"{alphas.pop():g}" if len(alphas) == 1 else "Dynamic"
    return dim, alpha


def kohya_metadata(lf: LoraFile, family: str | None = None, **updates: str) -> dict[str, str]:
    """The file's metadata with the keys A1111/ComfyUI need filled in (existing values win, ``updates`` override)."""
    meta = dict(lf.metadata)
    family = family or lf.family()
    dim, alpha = network_dims(lf)
    defaults = {"ss_network_module": "networks.lora", "ss_network_dim": dim, "ss_network_alpha": alpha}
    if family in FAMILY_META:
        version, v2, arch = FAMILY_META[family]
        defaults.update(ss_base_model_version=version, ss_v2=v2)
        defaults["modelspec.architecture"] = arch
        defaults["modelspec.sai_model_spec"] = "1.0.0"
        defaults["modelspec.implementation"] = "https://github.com/kohya-ss/sd-scripts"
    for k, v in defaults.items():
        meta.setdefault(k, v)
    meta.update(updates)
    return meta


def read_kohya(path, layout: UnetLayout = SDXL, allow_pickle: bool = False) -> LoraFile:
    tensors, metadata = read_safetensors(path, allow_pickle=allow_pickle)
    if not is_kohya(tensors):
        raise LoraFileError(path, f"not a kohya LoRA file: its keys do not start with lora_unet_/lora_te_ "
                            f"(first keys: {sorted(tensors)[:3]}). Use lorakit.formats.read_lora for other formats.")
    return check_lora(from_state_dict(tensors, metadata, layout, str(path)), path, names=True)


def write_kohya(lf: LoraFile, path, dtype: str | torch.dtype | None = None, family: str | None = None,
                naming: Naming | None = None, hashes: bool = True) -> None:
    """Write ``lf`` as a kohya file (atomically), with A1111's metadata and fresh sshs hashes."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: expected one of {sorted(DTYPES)}.")
        dtype = DTYPES[dtype]
    tensors = to_state_dict(lf, dtype, naming)
    meta = kohya_metadata(lf, family)
    if hashes:
        meta["sshs_model_hash"], meta["sshs_legacy_hash"] = sshs_hashes(tensors, meta)
    write_safetensors(path, tensors, meta)
