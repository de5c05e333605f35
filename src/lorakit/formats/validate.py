"""Complete validation of a LoRA file in memory: the one place every reader, tool and loader uses.

A module is consistent when its tensors form exactly one algorithm (``lorafile.SUFFIXES``), every
factor has a positive size, ``lora_up``/``lora_down`` (and LoHa/LoKr factor pairs) agree on the
rank, the factors multiply together (checked on the ``meta`` device: shapes only, no arithmetic),
``alpha`` is one finite number and ``dora_scale`` has one entry per output row (or input column).
Kohya module names must be made of the words Stable Diffusion's U-Net and CLIP text encoders use,
so a name from another model is reported instead of being carried along silently.
PEFT ``adapter_config.json`` files are checked for the JSON type of every field lorakit reads.
"""

from __future__ import annotations

import math
import re

import torch

from .dit_keys import TE_PARTS, TRANSFORMER
from .errors import LoraFileError, problem
from .lorafile import SUFFIXES, LoraFile
from .lycoris import ALGOS
from .sd_keys import ATOMS

#: (suffix, factor it must share the rank with, dim of this tensor, dim of the partner, Tucker core that
#: changes the layout (then the meta-device product checks the shapes))
RANK_PAIRS = (("lora_down.weight", "lora_up.weight", 0, 1, None), ("hada_w1_b", "hada_w1_a", 0, 1, "hada_t1"),
              ("hada_w2_b", "hada_w2_a", 0, 1, "hada_t2"), ("lokr_w1_b", "lokr_w1_a", 0, 1, None),
              ("lokr_w2_b", "lokr_w2_a", 0, 1, "lokr_t2"))
#: factors that need their partner (the other half of a product)
PARTNERS = {"lora_down.weight": "lora_up.weight", "lora_up.weight": "lora_down.weight",
            "hada_w1_a": "hada_w1_b", "hada_w1_b": "hada_w1_a", "hada_w2_a": "hada_w2_b", "hada_w2_b": "hada_w2_a",
            "lokr_w1_a": "lokr_w1_b", "lokr_w1_b": "lokr_w1_a", "lokr_w2_a": "lokr_w2_b", "lokr_w2_b": "lokr_w2_a"}
#: path words of Stable Diffusion U-Nets and CLIP text encoders (besides ``sd_keys.ATOMS`` and numbers)
WORDS = ATOMS | frozenset("""
attentions resnets downsamplers upsamplers attn1 attn2 ff net proj conv conv1 conv2 norm norm1 norm2 norm3
encoder layers mlp fc1 fc2 embeddings layer token position embedding emb time text model
""".split())
#: the first path word each model part can start with
ROOTS = {"unet": {"down_blocks", "up_blocks", "mid_block", "conv_in", "conv_out", "time_embedding",
                  "add_embedding", "conv_norm_out", "class_embedding"},
         "text_encoder": {"text_model", "encoder", "embeddings", "final_layer_norm", "text_projection"}}
ROOTS["text_encoder_2"] = ROOTS["text_encoder"]
DIT_PARTS = (TRANSFORMER, *TE_PARTS)


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=torch.float32, device="meta")


def module_problems(key: str, m: dict[str, torch.Tensor]) -> list[str]:
    """Every inconsistency of one module (empty when it is consistent)."""
    out = []
    algos = {SUFFIXES[s] for s in m if SUFFIXES.get(s)}
    if len(algos) != 1:
        return [problem(key, f"tensors {sorted(m)}", "exactly one adapter kind: lora_down+lora_up, hada_*, "
                        "lokr_* or diff")]
    for s, t in m.items():
        if s != "alpha" and (t.dim() == 0 or 0 in t.shape):
            out.append(problem(f"{key}.{s}", f"shape {tuple(t.shape)}", "a tensor with every dimension >= 1"))
    for s, partner in PARTNERS.items():
        if s in m and partner not in m:
            out.append(problem(f"{key}.{s}", f"no {partner}", f"{s} and {partner} together (one is half of a product)"))
    if out:
        return out
    for a, b, da, db, core in RANK_PAIRS:
        if a in m and b in m and core not in m and m[a].shape[da] != m[b].shape[db]:
            out.append(problem(key, f"{a} rank {m[a].shape[da]} {tuple(m[a].shape)} but {b} rank "
                               f"{m[b].shape[db]} {tuple(m[b].shape)}", "both factors with the same rank"))
    if "lora_up.weight" in m and m["lora_up.weight"].dim() not in (2, 4):
        out.append(problem(f"{key}.lora_up.weight", f"{m['lora_up.weight'].dim()} dimensions", "2 (Linear) or 4 (conv)"))
    if "alpha" in m:
        a = m["alpha"]
        if a.numel() != 1:
            out.append(problem(f"{key}.alpha", f"shape {tuple(a.shape)}", "one number (a 0-d tensor)"))
        elif not a.is_floating_point() or not math.isfinite(float(a.float())):
            out.append(problem(f"{key}.alpha", f"{float(a.float()) if a.is_floating_point() else a.dtype}",
                               "a finite float"))
    if out:
        return out
    algo = algos.pop()
    try:
        delta = ALGOS[algo]({s: _meta(t) for s, t in m.items()})
    except KeyError as exc:
        return [problem(key, f"tensors {sorted(m)} without {exc.args[0]}", f"every factor of a {algo} module")]
    except (RuntimeError, ValueError, IndexError) as exc:
        msg = str(exc).splitlines()[0]
        return [problem(key, f"factor shapes {({s: tuple(t.shape) for s, t in m.items()})} that do not multiply "
                        f"({msg})", "factors of one update")]
    if "dora_scale" in m and m["dora_scale"].numel() not in (delta.shape[0], math.prod(delta.shape[1:2])):
        out.append(problem(f"{key}.dora_scale", f"{m['dora_scale'].numel()} values",
                           f"one per output row ({delta.shape[0]}) or input column"))
    return out


def name_problems(key: str) -> list[str]:
    """A module name (``part.path``) made of words no SD U-Net / CLIP module has."""
    part, _, path = key.partition(".")
    if part in DIT_PARTS:  # FLUX.1/SD3 names were mapped through dit_keys' tables, which refuse unknown ones
        return []
    words = path.split(".")
    if part in ROOTS and words[0] not in ROOTS[part]:
        return [problem(key, f"module path starting with {words[0]!r}",
                        f"a {part} module ({', '.join(sorted(ROOTS[part]))}...); is the file for another model?")]
    unknown = [w for w in words if not w.isdigit() and w not in WORDS]
    if unknown:
        return [problem(key, f"unknown module name words {unknown}", "a Stable Diffusion U-Net or CLIP text-encoder "
                        "module; is the file for another model (or LoRA trainer)?")]
    return []


def check_lora(lf: LoraFile, path, names: bool = False) -> LoraFile:
    """Raise one ``LoraFileError`` listing every inconsistent module of ``lf``; return ``lf`` when it is fine
    (with ``lf.path`` set, so later errors name the file)."""
    lf.path = str(path)
    problems = []
    for key, m in lf.modules.items():
        problems += module_problems(key, m) + (name_problems(key) if names else [])
    if problems:
        raise LoraFileError(path, problems, "Nothing was loaded or written. Re-download or re-export the file; "
                            "`lorakit inspect` lists its modules.")
    return lf


def require_finite(lf: LoraFile, what: str) -> None:
    """NaN/Inf factors break SVD-based tools: refuse them, naming each module."""
    bad = [f"{key}.{s}" for key, m in lf.modules.items() for s, t in m.items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise LoraFileError(lf.path or "LoRA", [problem(b, "NaN/Inf values", "finite numbers") for b in bad],
                            f"{what} needs finite factors; `lorakit inspect` shows the broken modules.")


# -- adapter_config.json -------------------------------------------------------------------------------
_NUM, _INT, _STR, _BOOL, _NONE = (int, float), (int,), (str,), (bool,), (type(None),)
#: PEFT field -> (JSON types accepted, what to write)
PEFT_FIELDS = {
    "peft_type": (_STR + _NONE, 'a string such as "LORA"'), "r": (_INT, "a positive integer"),
    "init_r": (_INT, "a positive integer"), "target_r": (_INT, "a positive integer"),
    "lora_alpha": (_NUM, "a number"), "alpha": (_NUM, "a number"), "lora_dropout": (_NUM + _NONE, "a number"),
    "target_modules": ((list, str) + _NONE, "a list of module names or a regex string"),
    "exclude_modules": ((list, str) + _NONE, "a list of module names or a regex string"),
    "modules_to_save": ((list,) + _NONE, "a list of module names or null"),
    "rank_pattern": ((dict,) + _NONE, "an object of regex -> integer"),
    "alpha_pattern": ((dict,) + _NONE, "an object of regex -> number"),
    "layers_to_transform": ((list, int) + _NONE, "an integer or a list of integers"),
    "layers_pattern": ((list, str) + _NONE, "a string or a list of strings"),
    "init_lora_weights": ((bool, str), "true, false or an init name"), "init_weights": ((bool, str), "true or false"),
    "use_dora": (_BOOL + _NONE, "true or false"), "use_rslora": (_BOOL + _NONE, "true or false"),
    "bias": (_STR, '"none", "all" or "lora_only"'), "fan_in_fan_out": (_BOOL + _NONE, "true or false"),
    "decompose_both": (_BOOL, "true or false"), "decompose_factor": (_INT, "an integer"),
    "use_effective_conv2d": (_BOOL, "true or false"), "lorakit_quantization": ((dict,) + _NONE, "an object"),
    **{k: (_INT + _NONE, "an integer") for k in ("tinit", "tfinal", "deltaT", "total_step")},
    **{k: (_NUM, "a number") for k in ("beta1", "beta2", "orth_reg_weight")},
}


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"the number {value!r}" if isinstance(value, (int, float)) else type(value).__name__)


def peft_config_problems(data) -> list[str]:
    """JSON-type problems of a PEFT ``adapter_config.json`` (its values are checked by ``LoraConfig``)."""
    if not isinstance(data, dict):
        return [problem("adapter_config.json", _kind(data), "a JSON object of PEFT config fields")]
    out = []
    for key, (types, what) in PEFT_FIELDS.items():
        if key not in data:
            continue
        v = data[key]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            out.append(problem(key, f"{_kind(v)} ({v!r:.60})", what))
            continue
        if isinstance(v, float) and not math.isfinite(v):
            out.append(problem(key, repr(v), "a finite number"))
        if isinstance(v, list) and key != "layers_to_transform" and not all(isinstance(x, str) for x in v):
            out.append(problem(key, f"{v!r:.60}", "a list of strings"))
        if isinstance(v, list) and key == "layers_to_transform" and not all(type(x) is int for x in v):
            out.append(problem(key, f"{v!r:.60}", "a list of integers"))
        if isinstance(v, dict) and key.endswith("_pattern") and data.get("peft_type") != "ADALORA":
            for k, x in v.items():
                if type(x) not in (int, float) or not math.isfinite(x) or x <= 0:
                    out.append(problem(f"{key}[{k!r}]", repr(x), "a positive number"))
                try:
                    re.compile(k)
                except re.error as exc:
                    out.append(problem(f"{key} key {k!r}", f"an invalid regex ({exc})", "a regular expression"))
    return out


def check_peft_config(data, path) -> dict:
    """Raise ``LoraFileError`` naming every mistyped field of ``path``; return ``data`` when it is fine."""
    problems = peft_config_problems(data)
    if problems:
        raise LoraFileError(path, problems, "Fix these fields (PEFT writes them with these types), or re-save the "
                            "adapter with PEFT or lorakit.")
    return data
