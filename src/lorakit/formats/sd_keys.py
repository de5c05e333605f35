"""Stable Diffusion module names: kohya's flattened names <-> diffusers module paths.

kohya writes a module as ``<prefix>_<path with . replaced by _>``. The prefix names the model part
(``PREFIXES``); the path is a diffusers path (SD1/SD2 U-Net, text encoders) or, for SDXL, a
SAI/LDM path (``input_blocks.4.1...``). Two tables undo this without a model at hand:

* ``ATOMS``: the multi-word names that contain an underscore, so that dots can be put back
  (``down_blocks_0_attentions_0_proj_in`` -> ``down_blocks.0.attentions.0.proj_in``);
* ``sai_blocks(layout)``: SAI block prefix -> diffusers block prefix, built from the U-Net's
  block layout (``SDXL``, ``SD1`` or :func:`layout_from_config`), plus ``RESNET_SAI`` renames.

Every function raises ``KeyError`` naming the key it cannot map; nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

#: kohya name prefix -> model part (diffusers pipeline attribute)
PREFIXES = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder",
            "lora_te2": "text_encoder_2", "lycoris": "unet"}

#: names containing "_" that are one path component (longest match wins)
ATOMS = frozenset("""
down_blocks up_blocks mid_block transformer_blocks to_q to_k to_v to_out proj_in proj_out
time_emb_proj conv_shortcut conv_in conv_out time_embedding linear_1 linear_2 add_embedding
conv_norm_out norm_out text_model self_attn q_proj k_proj v_proj out_proj final_layer_norm
text_projection input_blocks middle_block output_blocks in_layers out_layers emb_layers
skip_connection time_embed label_emb add_k_proj add_v_proj class_embedding
""".split())
_MAX_ATOM = max(a.count("_") + 1 for a in ATOMS)

#: SAI resnet sub-module -> diffusers name
RESNET_SAI = {"in_layers.2": "conv1", "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj",
              "skip_connection": "conv_shortcut"}
#: SAI modules outside the numbered blocks -> diffusers name
GLOBAL_SAI = {"input_blocks.0.0": "conv_in", "out.2": "conv_out", "time_embed.0": "time_embedding.linear_1",
              "time_embed.2": "time_embedding.linear_2", "label_emb.0.0": "add_embedding.linear_1",
              "label_emb.0.2": "add_embedding.linear_2"}


@dataclass(frozen=True)
class UnetLayout:
    """Block structure of a U-Net: which down/up blocks have attention, resnets per down block."""

    down_attn: tuple[bool, ...]
    up_attn: tuple[bool, ...]
    layers_per_block: int = 2


SDXL = UnetLayout((False, True, True), (True, True, False))
SD1 = UnetLayout((True, True, True, False), (False, True, True, True))


def layout_from_config(config) -> UnetLayout:
    """The layout of a diffusers ``UNet2DConditionModel`` config (object or dict)."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    lpb = get("layers_per_block", 2)
    if not isinstance(lpb, int):
        if len(set(lpb)) != 1:
            raise ValueError(f"layers_per_block={lpb}: SAI names need the same count in every block.")
        lpb = lpb[0]
    return UnetLayout(tuple("CrossAttn" in t for t in get("down_block_types")),
                      tuple("CrossAttn" in t for t in get("up_block_types")), lpb)


def sai_blocks(layout: UnetLayout) -> dict[str, str]:
    """SAI block prefix -> diffusers block prefix for ``layout`` (resnets, attentions, samplers)."""
    table, n, lpb = {}, len(layout.down_attn), layout.layers_per_block
    i = 1
    for b in range(n):
        for k in range(lpb):
            table[f"input_blocks.{i}.0"] = f"down_blocks.{b}.resnets.{k}"
            if layout.down_attn[b]:
                table[f"input_blocks.{i}.1"] = f"down_blocks.{b}.attentions.{k}"
            i += 1
        if b < n - 1:
            table[f"input_blocks.{i}.0.op"] = f"down_blocks.{b}.downsamplers.0.conv"
            i += 1
    table.update({"middle_block.0": "mid_block.resnets.0", "middle_block.1": "mid_block.attentions.0",
                  "middle_block.2": "mid_block.resnets.1"})
    i = 0
    for b in range(len(layout.up_attn)):
        for k in range(lpb + 1):
            table[f"output_blocks.{i}.0"] = f"up_blocks.{b}.resnets.{k}"
            if layout.up_attn[b]:
                table[f"output_blocks.{i}.1"] = f"up_blocks.{b}.attentions.{k}"
            if k == lpb and b < len(layout.up_attn) - 1:
                table[f"output_blocks.{i}.{2 if layout.up_attn[b] else 1}.conv"] = f"up_blocks.{b}.upsamplers.0.conv"
            i += 1
    return table


_SAI_CACHE: dict[UnetLayout, tuple[dict, dict]] = {}


def _tables(layout: UnetLayout) -> tuple[dict, dict]:
    if layout not in _SAI_CACHE:
        fwd = {**sai_blocks(layout), **GLOBAL_SAI}
        _SAI_CACHE[layout] = (fwd, {v: k for k, v in fwd.items()})
    return _SAI_CACHE[layout]


def _rewrite(path: str, table: dict[str, str], inner: dict[str, str]) -> str | None:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):  # longest known prefix first
        head = ".".join(parts[:cut])
        if head in table:
            rest = ".".join(parts[cut:])
            rest = inner.get(rest, rest)
            return table[head] + ("." + rest if rest else "")
    return None


def sai_to_diffusers(path: str, layout: UnetLayout = SDXL) -> str:
    """``input_blocks.4.1.proj_in`` -> ``down_blocks.1.attentions.0.proj_in`` (raises on unknown blocks)."""
    out = _rewrite(path, _tables(layout)[0], RESNET_SAI)
    if out is None:
        raise KeyError(f"SAI/LDM U-Net module {path!r} is not in the block table of layout {layout}.")
    return out


def diffusers_to_sai(path: str, layout: UnetLayout = SDXL) -> str:
    """Inverse of :func:`sai_to_diffusers`."""
    out = _rewrite(path, _tables(layout)[1], {v: k for k, v in RESNET_SAI.items()})
    if out is None:
        raise KeyError(f"diffusers U-Net module {path!r} has no SAI/LDM name in layout {layout}.")
    return out


def is_sai(path: str) -> bool:
    return path.split(".", 1)[0] in ("input_blocks", "middle_block", "output_blocks", "out", "time_embed",
                                     "label_emb")


def dotted(flat: str) -> str:
    """Put the dots back into a kohya-flattened path, using ``ATOMS``; raise on unknown words."""
    words, out, i = flat.split("_"), [], 0
    while i < len(words):
        for k in range(min(_MAX_ATOM, len(words) - i), 0, -1):
            cand = "_".join(words[i:i + k])
            if k > 1 and cand in ATOMS:
                break
            if k == 1:
                if not cand:
                    raise KeyError(f"empty name component in {flat!r}")
                break
        out.append(cand)
        i += k
    return ".".join(out)


def split_prefix(lora_name: str) -> tuple[str, str]:
    """``lora_te1_text_model_...`` -> (``lora_te1``, ``text_model_...``); raises on unknown prefixes."""
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if lora_name.startswith(prefix + "_"):
            return prefix, lora_name[len(prefix) + 1:]
    raise KeyError(f"{lora_name!r} has no known prefix; expected one of {sorted(PREFIXES)}.")


def from_kohya(lora_name: str, layout: UnetLayout = SDXL) -> tuple[str, str, str]:
    """kohya name -> (model part, diffusers module path, unet naming style ``diffusers``/``sai``/``""``)."""
    prefix, flat = split_prefix(lora_name)
    part, path = PREFIXES[prefix], dotted(flat)
    if part != "unet":
        return part, path, ""
    if is_sai(path):
        return part, sai_to_diffusers(path, layout), "sai"
    return part, path, "diffusers"


def to_kohya(part: str, path: str, *, sai: bool = False, te_split: bool = False,
             layout: UnetLayout = SDXL) -> str:
    """diffusers (model part, module path) -> kohya name; ``te_split`` uses ``lora_te1``/``lora_te2``."""
    if part == "unet":
        return "lora_unet_" + (diffusers_to_sai(path, layout) if sai else path).replace(".", "_")
    if part == "text_encoder":
        prefix = "lora_te1" if te_split else "lora_te"
    elif part == "text_encoder_2":
        prefix = "lora_te2"
    else:
        raise KeyError(f"model part {part!r} has no kohya prefix; expected unet, text_encoder or text_encoder_2.")
    return f"{prefix}_{path.replace('.', '_')}"


def te_alternatives(path: str) -> list[str]:
    """Text-encoder module paths to try: kohya files say ``text_model.encoder...``; transformers 5's
    ``CLIPTextModel`` dropped the ``text_model`` level (``CLIPTextModelWithProjection`` kept it)."""
    if path.startswith("text_model."):
        return [path, path[len("text_model."):]]
    return [path, "text_model." + path]


def canonical_te(path: str) -> str:
    """The kohya spelling of a text-encoder module path (with the ``text_model.`` level)."""
    if path.startswith(("encoder.", "embeddings.", "final_layer_norm")):
        return "text_model." + path
    return path
