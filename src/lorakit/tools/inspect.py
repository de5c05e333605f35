"""``lorakit inspect``: what a LoRA file holds, and whether it looks trained and healthy.

Per module: algorithm, rank, alpha, scale and ‖ΔW‖_F (for LoRA from the r×r Gram matrices,
‖up·down‖_F² = tr((upᵀup)(down·downᵀ)), without forming ΔW). Warnings: all-zero ``lora_up``
(an untrained module, as kohya's check_lora_weights.py finds) and NaN/Inf tensors, named as the
file names them (``lora_B`` in PEFT and diffusers files). For a FLUX.1/SD3 file: its transformer layout
(fused original names or split diffusers ones), ranks per part, and what converting to the other
layout does to the rank (split -> fused may raise it).

Stable Diffusion files (kohya, LyCORIS, diffusers, PEFT directories of a U-Net or text encoder) are
read by :func:`lorakit.formats.sd_io.read_lora`; a PEFT adapter of any other model (an LLM, a
classifier) is reported in PEFT's own terms (:func:`inspect_peft`): its module paths, ``lora_A``/
``lora_B``, the config's alpha and scale, and the other tensors it carries (copies of the base
embedding saved with ``save_embedding_layers``, ``modules_to_save`` copies).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..formats._io import read_json, read_safetensors
from ..formats.dit_layout import to_fused
from ..formats.errors import LoraFileError
from ..formats.lorafile import LoraFile, alpha_of, rank_of, scale_of
from ..formats.lycoris import ALGOS
from ..formats.peft_sd import PEFT_PREFIX, _pattern
from ..formats.sd_io import read_lora
from ..formats.validate import check_peft_config, name_problems

#: PEFT tensor suffix -> the name ``LoraFile`` modules use (the math in ``lycoris.ALGOS`` reads them)
PEFT_SUFFIXES = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
                 "lora_embedding_A": "lora_down.weight", "lora_embedding_B": "lora_up.weight",
                 "lora_E": "lora_E", "lora_magnitude_vector": "dora_scale",
                 **{k: k for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1",
                                   "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")}}


@dataclass(frozen=True)
class ModuleInfo:
    key: str
    algo: str
    rank: int | None
    alpha: float | None
    scale: float
    norm: float
    dora: bool
    dtype: str


@dataclass
class Report:
    path: str
    source: str
    family: str | None
    naming: str
    modules: list[ModuleInfo]
    metadata: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What else the file holds (e.g. a copy of the base embedding), one line each."""
    by_part: bool = True
    """Count modules by model part (unet, text_encoder); else by layer name (q_proj, v_proj)."""
    layout: dict = field(default_factory=dict)
    """FLUX.1/SD3 files: ``fused`` and ``to_fused`` (what the other layout does to the ranks)."""

    def summary(self) -> dict:
        parts = Counter(m.key.split(".", 1)[0] if self.by_part else m.key.rsplit(".", 1)[-1] for m in self.modules)
        ranks_per_part: dict[str, Counter] = {}
        for m in self.modules:
            ranks_per_part.setdefault(m.key.split(".", 1)[0], Counter())[m.rank] += 1
        return {"format": self.source, "family": self.family or "unknown", "naming": self.naming,
                "modules": dict(parts), "algorithms": dict(Counter(m.algo for m in self.modules)),
                "ranks": dict(Counter(m.rank for m in self.modules)),
                **({"ranks_per_part": {p: dict(c) for p, c in ranks_per_part.items()}} if self.by_part else {}),
                "alphas": dict(Counter(m.alpha for m in self.modules)),
                "dtypes": dict(Counter(m.dtype for m in self.modules)), **self.layout}


def _norm(m: dict, algo: str) -> float:
    """‖ΔW‖_F before the scale."""
    if algo == "lora" and "lora_mid.weight" not in m:
        up, down = m["lora_up.weight"].float().flatten(1), m["lora_down.weight"].float().flatten(1)
        gram = ((up.t() @ up) * (down @ down.t())).sum().clamp(min=0)
        return float(gram.sqrt())
    return float(ALGOS[algo](m).norm())


def _module(key: str, m: dict, algo: str, up: str, alpha, scale: float, warnings: list[str]) -> ModuleInfo:
    """One module's line; ``up`` is the file's name for the factor that starts at zero."""
    bad = [up if s == "lora_up.weight" else s for s, t in m.items() if not torch.isfinite(t.float()).all()]
    if bad:
        warnings.append(f"{key}: NaN/Inf in {bad}; this module will break every output it touches.")
    if "lora_up.weight" in m and not m["lora_up.weight"].any():
        warnings.append(f"{key}: {up} is all zeros (untrained module: it changes nothing).")
    plain = {s: t for s, t in m.items() if s != "alpha"}
    norm = float("nan") if bad else _norm(plain, algo) * abs(scale)
    dtype = str(next(iter(plain.values())).dtype).removeprefix("torch.")
    return ModuleInfo(key, algo, rank_of(m), alpha, scale, norm, "dora_scale" in m, dtype)


def inspect_lora(path_or_file) -> Report:
    """The report of a LoRA file, LoraFile or adapter directory (PEFT adapters of non-SD models included)."""
    if not isinstance(path_or_file, LoraFile):
        peft = _peft_adapter(Path(path_or_file))
        if peft is not None:
            return inspect_peft(path_or_file, *peft)
    lf = path_or_file if isinstance(path_or_file, LoraFile) else read_lora(path_or_file)
    up = "lora_B" if lf.source in ("peft", "diffusers") else "lora_up"
    infos, warnings = [], []
    for key, m in lf.modules.items():
        infos.append(_module(key, m, lf.algo(key), up, alpha_of(m), scale_of(m), warnings))
    naming = f"unet={lf.naming.unet_style}, text encoders={'te1/te2' if lf.naming.te_split else 'te'}"
    layout = {}
    if lf.naming.dit:
        naming = ("transformer=fused (original BFL/SAI names: qkv, linear1)" if lf.naming.fused else
                  "transformer=split (diffusers names: to_q/to_k/to_v)") + ", text encoders=te1 CLIP-L/te2 CLIP-G/te3 T5"
        layout = {"fused": lf.naming.fused, "to_fused": _fuse_report(lf)}
    return Report(str(path_or_file) if not isinstance(path_or_file, LoraFile) else "<LoraFile>", lf.source,
                  lf.family(), naming, infos, dict(lf.metadata), warnings, layout=layout)


def _fuse_report(lf: LoraFile) -> str:
    """What writing a split file in the fused layout (kohya/ComfyUI) does to its ranks."""
    if lf.naming.fused:
        return "already fused; splitting (peft) keeps every rank (up rows sliced, down copied)"
    try:
        notes = to_fused(lf)[1]
    except ValueError as exc:
        return f"cannot be fused: {exc}"
    if not notes:
        return "fusing (kohya/comfy) keeps every rank: the q/k/v parts share their lora_down"
    return f"fusing (kohya/comfy) raises the rank of {len(notes)} module(s), e.g. {notes[0].split(': ', 1)[1]}"


def _split(body: str) -> tuple[str, str | None]:
    """``module.path.lora_A.weight`` -> (``module.path``, ``lora_A.weight``); suffix None when unknown."""
    suffix = next((s for s in sorted(PEFT_SUFFIXES, key=len, reverse=True) if body.endswith("." + s)), None)
    return (body[:-len(suffix) - 1], suffix) if suffix else (body, None)


def _peft_adapter(path: Path) -> tuple[dict, dict, dict] | None:
    """(tensors, metadata, adapter_config) when ``path`` is a PEFT adapter (directory, or its weights file
    with keys ``base_model.model.*``) of a model that is not a Stable Diffusion U-Net or text encoder
    (whose module names the SD readers would refuse)."""
    weights, config = (path / "adapter_model.safetensors", path / "adapter_config.json") if path.is_dir() else (
        path, path.parent / "adapter_config.json")
    if not weights.is_file() or (path.is_dir() and not config.is_file()):
        return None  # not a single PEFT directory: the SD readers say what it is
    tensors, metadata = read_safetensors(weights)
    if not tensors or not all(k.startswith(PEFT_PREFIX) for k in tensors):
        return None
    part = "text_encoder" if any(".text_model." in k for k in tensors) else "unet"  # as peft_sd guesses
    modules = {_split(k[len(PEFT_PREFIX):])[0] for k in tensors}
    if not any(name_problems(f"{part}.{m}") for m in modules):
        return None
    data = check_peft_config(read_json(config), config) if config.is_file() else {}
    return tensors, metadata, data


def inspect_peft(path, tensors: dict, metadata: dict, config: dict) -> Report:
    """A PEFT adapter of any model, in PEFT's terms (see the module docstring)."""
    peft_type = config.get("peft_type", "LORA")
    alpha_key = "alpha" if peft_type in ("LOHA", "LOKR") else "lora_alpha"
    saved = config.get("modules_to_save") or []
    modules: dict[str, dict] = {}
    notes, unknown = [], []
    for key, t in tensors.items():
        body = key[len(PEFT_PREFIX):]
        module, suffix = _split(body)
        if suffix is not None:
            modules.setdefault(module, {})[PEFT_SUFFIXES[suffix]] = t
        elif body.endswith(".base_layer.weight"):
            notes.append(f"{body}: a copy of the base model's weight {tuple(t.shape)} ({t.nbytes / 2**20:.1f} MiB), "
                         "as PEFT saves embedding layers (save_embedding_layers); loading the adapter puts it into "
                         "the model, as PEFT does.")
        elif any(body.rsplit(".", 1)[0] == s or body.rsplit(".", 1)[0].endswith("." + s) for s in saved):
            notes.append(f"{body}: a full trained copy (modules_to_save), shape {tuple(t.shape)}.")
        else:
            unknown.append(body)
    warnings = [f"{k}: not a tensor of a PEFT {peft_type} adapter; it would be refused when loading." for k in unknown]
    infos = []
    for name, m in sorted(modules.items()):
        if "lora_E" in m:  # AdaLoRA: ΔW = B·(A ⊙ E)
            m = {**m, "lora_down.weight": m["lora_down.weight"] * m.pop("lora_E")}
        kinds = {"lora" if "lora_down.weight" in m else "loha" if "hada_w1_a" in m else "lokr"}
        algo = kinds.pop()
        r = rank_of(m) or config.get("r")
        alpha = _pattern(name, config.get("alpha_pattern") or {}, config.get(alpha_key, r))
        scale = 1.0 if not r or alpha is None else alpha / (math.sqrt(r) if config.get("use_rslora") else r)
        infos.append(_module(name, m, algo, "lora_B", alpha, scale, warnings))
    family = config.get("base_model_name_or_path") or "unknown base model"
    naming = f"PEFT {peft_type}{' (DoRA)' if config.get('use_dora') else ''}: lora_A/lora_B" + (
        f", task {config['task_type']}" if config.get("task_type") else "")
    if not infos and not notes:
        raise LoraFileError(path, "holds no adapter tensors; expected a PEFT adapter (lora_A/lora_B...).")
    return Report(str(path), "peft", family, naming, infos, dict(metadata), warnings, notes, by_part=False)
