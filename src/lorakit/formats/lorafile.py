"""``LoraFile``: an image-model LoRA file in memory, independent of its on-disk key style.

Modules are keyed by ``"<model part>.<module path>"``; each holds its tensors under kohya/LyCORIS
suffixes (``SUFFIXES``). Stable Diffusion files use the diffusers pipeline parts and paths
(``unet.down_blocks.0...``, ``text_encoder.text_model...``); FLUX.1/SD3 files use the parts
``transformer``, ``te1``/``te2``/``te3`` and the transformer layout the file had (see
:mod:`.dit_keys`). ``naming`` remembers how the file spelled its names so that writing it back
gives the same keys. Readers for each format live beside this file (kohya, peft_sd, dit_io).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from .sd_keys import SDXL, UnetLayout

#: tensor suffix -> algorithm it belongs to (kohya LoRA/LoCon, LyCORIS LoHa/LoKr, DoRA, full diff)
SUFFIXES = {
    "lora_down.weight": "lora", "lora_up.weight": "lora", "lora_mid.weight": "lora", "alpha": "",
    "hada_w1_a": "loha", "hada_w1_b": "loha", "hada_w2_a": "loha", "hada_w2_b": "loha",
    "hada_t1": "loha", "hada_t2": "loha",
    "lokr_w1": "lokr", "lokr_w1_a": "lokr", "lokr_w1_b": "lokr", "lokr_w2": "lokr", "lokr_w2_a": "lokr",
    "lokr_w2_b": "lokr", "lokr_t2": "lokr",
    "diff": "full", "diff_b": "full", "dora_scale": "",
}
FAMILIES = ("sd1", "sd2", "sdxl", "flux1", "sd3")
#: tensor names only an adapter file holds: kohya/LyCORIS factors, PEFT's lora_A/lora_B, DoRA magnitudes
ADAPTER_KEY = re.compile(r"[._](lora_(down|up|A|B)\.weight|hada_w1_a|lokr_w1(_a)?|dora_scale|lora_magnitude_vector.*)$")


@dataclass
class Naming:
    """How a file spells module names: U-Net style (``diffusers`` or ``sai``), te1/te2 split, layout;
    for a DiT file (``dit`` = ``flux1``, ``sd3`` or ``dit`` when either fits) whether its transformer
    modules are in the original fused layout (``fused``) or diffusers' split one."""

    unet_style: str = "diffusers"
    te_split: bool = False
    layout: UnetLayout = SDXL
    dit: str = ""
    fused: bool = False


@dataclass
class LoraFile:
    modules: dict[str, dict[str, torch.Tensor]]
    metadata: dict[str, str] = field(default_factory=dict)
    naming: Naming = field(default_factory=Naming)
    source: str = "kohya"
    path: str = field(default="", compare=False)
    """File it was read from (names it in errors); empty for one built in memory."""

    def parts(self) -> set[str]:
        return {k.split(".", 1)[0] for k in self.modules}

    def algo(self, key: str) -> str:
        return module_algo(key, self.modules[key])

    def family(self) -> str | None:
        """Base model family the file was made for (``sd1``/``sd2``/``sdxl``/``flux1``/``sd3``), or None if unknown."""
        if self.naming.dit:
            return self.naming.dit if self.naming.dit != "dit" else None
        return guess_family(self)


def module_algo(key: str, tensors: dict[str, torch.Tensor]) -> str:
    algos = {SUFFIXES[s] for s in tensors if SUFFIXES.get(s)}
    if len(algos) != 1:
        raise ValueError(f"module {key} mixes or lacks adapter tensors ({sorted(tensors)}); expected one of "
                         "lora_down/lora_up, hada_*, lokr_* or diff.")
    return algos.pop()


def rank_of(tensors: dict[str, torch.Tensor]) -> int | None:
    """The rank that ``alpha`` is divided by (kohya, LyCORIS), or None for full/kron-only updates."""
    for key, dim in (("lora_down.weight", 0), ("hada_w1_b", 0), ("lokr_w1_b", 0), ("lokr_w2_b", 0)):
        if key in tensors:
            return tensors[key].shape[dim]
    return None


def alpha_of(tensors: dict[str, torch.Tensor]) -> float | None:
    """Alpha as stored; a missing or zero alpha means alpha = rank (scale 1), as kohya and ComfyUI read it."""
    a = tensors.get("alpha")
    if a is None:
        return None
    a = float(a.float())
    return None if a == 0 or math.isnan(a) else a


def scale_of(tensors: dict[str, torch.Tensor]) -> float:
    r, a = rank_of(tensors), alpha_of(tensors)
    return 1.0 if r is None or a is None else a / r


def guess_family(lf: LoraFile) -> str | None:
    meta = lf.metadata
    version = meta.get("ss_base_model_version", "")
    arch = meta.get("modelspec.architecture", "")
    if version.startswith("sdxl") or arch.startswith("stable-diffusion-xl"):
        return "sdxl"
    if version.startswith("sd_v2") or meta.get("ss_v2") == "True" or arch.startswith("stable-diffusion-v2"):
        return "sd2"
    if version.startswith("sd_v1") or arch.startswith("stable-diffusion-v1"):
        return "sd1"
    if "text_encoder_2" in lf.parts() or lf.naming.unet_style == "sai" or lf.naming.te_split:
        return "sdxl"
    # cross-attention key width: 768 SD1, 1024 SD2, 2048 SDXL
    widths = {"lora_down.weight": 1, "hada_w1_b": 1}
    for key, t in lf.modules.items():
        if key.startswith("unet.") and key.endswith("attn2.to_k"):
            for suffix in widths:
                if suffix in t:
                    return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(t[suffix].shape[1])
    return None


def adapter_key(keys) -> str | None:
    """The first of ``keys`` that only a LoRA/LyCORIS/PEFT adapter file holds; None for a model's keys."""
    return next((k for k in keys if ADAPTER_KEY.search(k)), None)


#: diffusers transformer class -> DiT family
DIT_MODELS = {"FluxTransformer2DModel": "flux1", "ChromaTransformer2DModel": "flux1", "SD3Transformer2DModel": "sd3"}


def model_family(unet) -> str:
    """Family of a diffusers U-Net from its config (SDXL adds text_time embeddings; SD2 uses 1024-wide
    context), or of a FLUX.1/SD3 transformer from its class."""
    name = type(unet).__name__
    if name in DIT_MODELS:
        return DIT_MODELS[name]
    cfg = unet.config
    if getattr(cfg, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return "sd2" if getattr(cfg, "cross_attention_dim", None) == 1024 else "sd1"


#: lorakit adapter parameter name -> kohya / LyCORIS tensor suffix
ADAPTER_SUFFIX = {"lora_A": "lora_down.weight", "lora_B": "lora_up.weight", "magnitude": "dora_scale"}


def adapter_tensors(adapter) -> dict[str, torch.Tensor]:
    """kohya/LyCORIS tensors of one live lorakit adapter (LoRA, DoRA, LoHa, LoKr), with the alpha that makes
    the file's scale alpha/r equal the adapter's scale (rsLoRA included)."""
    out = {}
    for pname, p in adapter.named_parameters():
        t = p.detach().float()
        if pname == "magnitude":  # LyCORIS wd_on_output: one norm per output row, shaped like the weight
            t = t.reshape(-1, *([1] * (len(adapter.spec.kernel_size) + 1))) if adapter.spec.kind == "conv" \
                else t.reshape(-1, 1)
        out[ADAPTER_SUFFIX.get(pname, pname)] = t.contiguous()
    r = rank_of(out)
    if r is None:  # LoKr with both factors full: readers apply no scale, so fold it in
        key = "lokr_w2" if "lokr_w2" in out else "lokr_w1"
        out[key] = out[key] * adapter.scale
    else:
        out["alpha"] = torch.tensor(float(adapter.scale * r))
    return out
