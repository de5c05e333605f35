"""FLUX.1 and SD3/3.5 module names: the original layout (BFL Flux, SAI MMDiT) <-> diffusers, text encoders.

A LoRA for a DiT names its modules in one of two layouts:

* **fused** (what kohya, ComfyUI and the original checkpoints use): ``double_blocks.0.img_attn.qkv``
  holds q, k and v in one weight; ``single_blocks.0.linear1`` holds q, k, v and the MLP input;
  SD3's ``joint_blocks.0.x_block.attn.qkv`` likewise;
* **split** (diffusers' ``FluxTransformer2DModel``/``SD3Transformer2DModel``): ``transformer_blocks.0.attn.to_q``.

``FLUX1``/``SD3`` are the tables between them: each ``Entry`` is one fused module, the diffusers
modules its output rows split into (in order), their relative sizes (``ratios``: q, k, v, mlp =
1, 1, 1, 4, since FLUX.1's MLP is 4× the hidden size) and whether the rows are (shift, scale) in
the original and (scale, shift) in diffusers (``swap``: always for the final AdaLN, and for SD3's
last context AdaLN, the only one with 2 chunks). Chroma's guidance approximator is in ``FLUX1``.

Text encoders are named as ``transformers`` names them (CLIP ``text_model.encoder.layers.0.self_attn.q_proj``,
T5 ``encoder.block.0.layer.0.SelfAttention.q``) and kept under the parts ``te1`` (CLIP-L), ``te2``
(CLIP-G, SD3 only) and ``te3`` (T5-XXL), the numbers kohya's ``lora_te1_``/``lora_te2_``/``lora_te3_``
use. ``PIPE_PARTS`` maps them to diffusers pipeline attributes per family.

Every lookup raises ``KeyError`` naming what it cannot map; nothing is dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DIT_FAMILIES = ("flux1", "sd3")
UNKNOWN = "dit"  # a transformer file whose module names exist in both families (family still to be told)
TRANSFORMER, TE_PARTS = "transformer", ("te1", "te2", "te3")
#: file part -> diffusers pipeline attribute, per family
PIPE_PARTS = {"flux1": {"transformer": "transformer", "te1": "text_encoder", "te3": "text_encoder_2"},
              "sd3": {"transformer": "transformer", "te1": "text_encoder", "te2": "text_encoder_2",
                      "te3": "text_encoder_3"}}
#: file part -> kohya name prefix, ComfyUI key prefix
KOHYA_PREFIX = {"transformer": "lora_unet", "te1": "lora_te1", "te2": "lora_te2", "te3": "lora_te3"}
COMFY_PREFIX = {"transformer": "diffusion_model.", "te1": "text_encoders.clip_l.transformer.",
                "te2": "text_encoders.clip_g.transformer.", "te3": "text_encoders.t5xxl.transformer."}
#: the metadata kohya writes for a LoRA of each family: (ss_base_model_version, modelspec.architecture)
FAMILY_META = {"flux1": ("flux1", "flux-1-dev/lora"), "sd3": ("sd3", "stable-diffusion-3/lora")}


@dataclass(frozen=True)
class Entry:
    """One module of the original (fused) layout and the diffusers modules its rows become."""

    fused: str
    split: tuple[str, ...]
    ratios: tuple[int, ...] = (1,)
    swap: str = ""  # "", "always" or "pre_only" (SD3: only when the AdaLN has 2 chunks)


def _e(fused: str, *split: str, ratios=None, swap: str = "") -> Entry:
    return Entry(fused, tuple(split), tuple(ratios or (1,) * len(split)), swap)


def _stream(fused: str, names: tuple[str, ...], qkv: tuple[str, ...], out: str, ff: str, norm: str,
            swap: str = "") -> tuple[Entry, ...]:
    """One MMDiT stream of a block: attention qkv and output, the MLP's two layers, the AdaLN modulation."""
    q, proj, fc1, fc2, mod = names
    return (_e(fused + q, *qkv), _e(fused + proj, out), _e(fused + fc1, ff + ".net.0.proj"),
            _e(fused + fc2, ff + ".net.2"), _e(fused + mod, norm, swap=swap))


_D, _T, _S, _ST = "double_blocks.{i}.", "transformer_blocks.{i}.", "single_blocks.{i}.", "single_transformer_blocks.{i}."
_IMG = (_T + "attn.to_q", _T + "attn.to_k", _T + "attn.to_v")
_TXT = (_T + "attn.add_q_proj", _T + "attn.add_k_proj", _T + "attn.add_v_proj")
_FLUX_NAMES = ("attn.qkv", "attn.proj", "mlp.0", "mlp.2", "mod.lin")
_SD3_NAMES = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")
FLUX1 = (
    *_stream(_D + "img_", _FLUX_NAMES, _IMG, _T + "attn.to_out.0", _T + "ff", _T + "norm1.linear"),
    *_stream(_D + "txt_", _FLUX_NAMES, _TXT, _T + "attn.to_add_out", _T + "ff_context", _T + "norm1_context.linear"),
    _e(_S + "linear1", *(s.replace(_T, _ST) for s in _IMG), _ST + "proj_mlp", ratios=(1, 1, 1, 4)),
    _e(_S + "linear2", _ST + "proj_out"),
    _e(_S + "modulation.lin", _ST + "norm.linear"),
    _e("img_in", "x_embedder"),
    _e("txt_in", "context_embedder"),
    _e("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    _e("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    _e("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    _e("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    _e("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    _e("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
    _e("final_layer.linear", "proj_out"),
    _e("final_layer.adaLN_modulation.1", "norm_out.linear", swap="always"),
    _e("distilled_guidance_layer.in_proj", "distilled_guidance_layer.in_proj"),  # Chroma
    _e("distilled_guidance_layer.layers.{i}.in_layer", "distilled_guidance_layer.layers.{i}.linear_1"),
    _e("distilled_guidance_layer.layers.{i}.out_layer", "distilled_guidance_layer.layers.{i}.linear_2"),
    _e("distilled_guidance_layer.out_proj", "distilled_guidance_layer.out_proj"),
)
_X, _C = "joint_blocks.{i}.x_block.", "joint_blocks.{i}.context_block."
SD3 = (
    *_stream(_X, _SD3_NAMES, _IMG, _T + "attn.to_out.0", _T + "ff", _T + "norm1.linear"),
    *_stream(_C, _SD3_NAMES, _TXT, _T + "attn.to_add_out", _T + "ff_context", _T + "norm1_context.linear",
             swap="pre_only"),  # the last block's context AdaLN has 2 chunks (shift, scale)
    _e(_X + "attn2.qkv", *(s.replace("attn.", "attn2.") for s in _IMG)),  # SD3.5 dual attention
    _e(_X + "attn2.proj", _T + "attn2.to_out.0"),
    _e("x_embedder.proj", "pos_embed.proj"),
    _e("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    _e("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    _e("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
    _e("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
    _e("context_embedder", "context_embedder"),
    _e("final_layer.linear", "proj_out"),
    _e("final_layer.adaLN_modulation.1", "norm_out.linear", swap="always"),
)
TABLES = {"flux1": FLUX1, "sd3": SD3}
#: first name component of every original-layout module (``double_blocks``, ``img_in``, ``joint_blocks``, ...)
FUSED_ROOTS = tuple(sorted({e.fused.split(".")[0] for table in TABLES.values() for e in table}))

#: text-encoder modules LoRAs target (kohya: CLIPAttention, CLIPMLP, T5Attention, T5DenseGatedActDense)
CLIP_MODULES = tuple(f"text_model.encoder.layers.{{i}}.{m}" for m in
                     ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                      "mlp.fc1", "mlp.fc2")) + ("text_projection",)
T5_MODULES = tuple(f"encoder.block.{{i}}.layer.{m}" for m in
                   ("0.SelfAttention.q", "0.SelfAttention.k", "0.SelfAttention.v", "0.SelfAttention.o",
                    "1.DenseReluDense.wi_0", "1.DenseReluDense.wi_1", "1.DenseReluDense.wi", "1.DenseReluDense.wo"))


def _patterns(template: str) -> tuple[re.Pattern, re.Pattern]:
    """(dotted, kohya-flattened) regexes of a template with an optional ``{i}`` block index."""
    dotted = re.escape(template).replace(r"\{i\}", r"(\d+)")
    return re.compile(dotted + "$"), re.compile(dotted.replace(r"\.", "_") + "$")


_FUSED = {fam: [(entry, *_patterns(entry.fused)) for entry in table] for fam, table in TABLES.items()}
_SPLIT = {fam: [(entry, k, *_patterns(s)) for entry in table for k, s in enumerate(entry.split)]
          for fam, table in TABLES.items()}
_TE = {"clip": [(t, *_patterns(t)) for t in CLIP_MODULES], "t5": [(t, *_patterns(t)) for t in T5_MODULES]}


def _fill(template: str, index: str | None) -> str:
    return template.replace("{i}", index) if index is not None else template


def fused_entry(family: str, path: str, flat: bool = False) -> tuple[Entry, str | None, str]:
    """(entry, block index, dotted path) of a fused-layout module path (kohya-flattened when ``flat``)."""
    for entry, dotted, flattened in _FUSED[family]:
        m = (flattened if flat else dotted).match(path)
        if m:
            index = m.group(1) if m.groups() else None
            return entry, index, _fill(entry.fused, index)
    raise KeyError(f"{path!r} is not a {family} module in the original (fused) layout")


def split_entry(family: str, path: str, flat: bool = False) -> tuple[Entry, str | None, int, str]:
    """(entry, block index, position in ``entry.split``, dotted path) of a diffusers module path."""
    for entry, k, dotted, flattened in _SPLIT[family]:
        m = (flattened if flat else dotted).match(path)
        if m:
            index = m.group(1) if m.groups() else None
            return entry, index, k, _fill(entry.split[k], index)
    raise KeyError(f"{path!r} is not a {family} module of diffusers' transformer")


def families_of(path: str, fused: bool, flat: bool = False) -> set[str]:
    """The DiT families that have transformer module ``path`` (fused or diffusers layout)."""
    found = set()
    for family in DIT_FAMILIES:
        try:
            fused_entry(family, path, flat) if fused else split_entry(family, path, flat)
        except KeyError:
            continue
        found.add(family)
    return found


def transformer_path(path: str, fused: bool, flat: bool = False) -> str:
    """The dotted transformer module path of ``path`` in either family (KeyError when neither has it)."""
    for family in DIT_FAMILIES:
        try:
            return (fused_entry(family, path, flat) if fused else split_entry(family, path, flat))[-1]
        except KeyError:
            continue
    raise KeyError(f"{path!r} is not a FLUX.1 or SD3 transformer module ({'original fused' if fused else 'diffusers'} "
                   "names)")


def fused_name(entry: Entry, index: str | None) -> str:
    return _fill(entry.fused, index)


def split_names(entry: Entry, index: str | None) -> list[str]:
    return [_fill(s, index) for s in entry.split]


def te_kind(path: str) -> str:
    """``t5`` or ``clip`` from a text-encoder module path (dotted or kohya-flattened)."""
    return "t5" if path.startswith(("encoder.block", "encoder_block", "shared")) else "clip"


def te_path(path: str, flat: bool = False) -> str:
    """The canonical dotted text-encoder module path (CLIP with its ``text_model.`` level)."""
    if not flat and path.startswith("encoder.layers."):  # transformers 5's CLIPTextModel has no text_model level
        path = "text_model." + path
    for template, dotted, flattened in _TE[te_kind(path)]:
        m = (flattened if flat else dotted).match(path)
        if m:
            return _fill(template, m.group(1) if m.groups() else None)
    raise KeyError(f"{path!r} is not a CLIP or T5 attention/MLP module (the text-encoder modules LoRAs target)")
