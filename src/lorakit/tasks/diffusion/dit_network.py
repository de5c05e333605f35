"""The FLUX.1 / SD3 network: kohya's targets on diffusers' transformers, injected with lorakit's
``inject`` (QLoRA: the frozen transformer in NF4/FP4), and CLIP (optionally T5) adapters.

Targets (kohya ``networks/lora_flux.py`` / ``lora_sd3.py``): every Linear inside the transformer
blocks — FLUX.1's double blocks (``FluxTransformerBlock``: modulation, img/txt q/k/v, projections
and MLPs) and single blocks (``FluxSingleTransformerBlock``: modulation, q/k/v + MLP input, output),
SD3's joint blocks (``JointTransformerBlock``: the x and context modulation, attention and MLP, and
3.5's second attention). ``train_blocks``/``train_*_block_indices`` choose blocks.

The original checkpoints fuse q, k and v (and, in FLUX.1's single blocks, the MLP input) in one
Linear, so kohya's LoRA there is one down (r × in) and one up whose rows cover all the parts.
diffusers keeps the parts apart; the same LoRA is the parts' adapters sharing one ``lora_A``
(ΔW_part = s·B_part·A, the up's row slices): ``split_qkv: true`` gives each part its own A instead.
DoRA shares the down the same way (its magnitude is per output row), LoHa its two input-side factors
and LoKr its W2 where the parts' factorisations agree.
Text encoders: every Linear in CLIP's attention and MLP; T5's attention and feed-forward with
``train_t5xxl``.
"""

from __future__ import annotations

import re

from torch import nn

from ...config import LoraConfig
from ...inject import inject
from ...model import lora_layers
from .dit_config import parse_blocks
from .dropout import add_dropouts
from .network import ADAPTER, TE_CLASSES, kohya_targets

T5_CLASSES = ("T5Attention", "T5DenseGatedActDense", "T5DenseActDense")
#: parts of one fused Linear in the original checkpoints, relative to a block
FUSED = (("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
         ("attn2.to_q", "attn2.to_k", "attn2.to_v"))
_BLOCK = re.compile(r"^((?:single_)?transformer_blocks)\.(\d+)\.")


def block_selection(transformer: nn.Module, family: str, net_args, errors: list[str]) -> dict[str, set[int] | None]:
    """{block list name: indices to adapt (None = all)} from ``train_blocks`` and the index keys."""
    n_double = len(transformer.transformer_blocks)
    if family == "sd3":
        return {"transformer_blocks": parse_blocks(net_args.train_block_indices, n_double, "train_block_indices",
                                                   errors)}
    n_single = len(transformer.single_transformer_blocks)
    double = parse_blocks(net_args.train_double_block_indices, n_double, "train_double_block_indices", errors)
    single = parse_blocks(net_args.train_single_block_indices, n_single, "train_single_block_indices", errors)
    if net_args.train_blocks == "single":
        double = set()
    elif net_args.train_blocks == "double":
        single = set()
    return {"transformer_blocks": double, "single_transformer_blocks": single}


def transformer_targets(transformer: nn.Module, family, net_args) -> list[str]:
    """kohya's Linear targets in the chosen blocks; raises on a bad block selection."""
    errors: list[str] = []
    chosen = block_selection(transformer, family.name, net_args, errors)
    if errors:
        raise ValueError("; ".join(errors))
    out = []
    for name in kohya_targets(transformer, family.block_classes):
        m = _BLOCK.match(name)
        keep = chosen.get(m.group(1)) if m else set()
        if keep is None or (m and int(m.group(2)) in keep):
            out.append(name)
    return out


def fused_groups(names: list[str]) -> list[list[str]]:
    """The adapted module names that are parts of one fused Linear, grouped (two or more parts each)."""
    present, groups = set(names), []
    for name in names:
        m = _BLOCK.match(name)
        if m is None or not name.endswith(("attn.to_q", "attn.add_q_proj", "attn2.to_q")):
            continue
        block = m.group(0)
        for parts in FUSED:
            if name == block + parts[0]:
                group = [block + p for p in parts if block + p in present]
                if len(group) > 1:
                    groups.append(group)
    return groups


#: per adapter kind, the factors that act on a layer's input side (not indexed by output rows): the parts of
#: a fused Linear that share them stack into one module of the original layout (``formats.dit_layout``)
COLUMN_FACTORS = {"LoraAdapter": ("lora_A",), "KohyaDropoutLora": ("lora_A",), "DoraAdapter": ("lora_A",),
                  "LohaAdapter": ("hada_w1_b", "hada_w2_b"), "LokrAdapter": ("lokr_w2", "lokr_w2_a", "lokr_w2_b")}


def tie_fused(model: nn.Module, names: list[str]) -> int:
    """Make the parts of each fused Linear share the first part's column factors (LoRA/DoRA's down, LoHa's
    ``hada_w*_b``, LoKr's ``lokr_w2`` where the parts' shapes agree); returns the groups tied."""
    groups = fused_groups(names)
    for group in groups:
        adapters = [model.get_submodule(n).adapters[ADAPTER] for n in group]
        for pname in COLUMN_FACTORS.get(type(adapters[0]).__name__, ()):
            first = getattr(adapters[0], pname, None)
            if first is not None and all(getattr(a, pname, None) is not None and getattr(a, pname).shape == first.shape
                                         for a in adapters):
                for ad in adapters[1:]:
                    setattr(ad, pname, first)
    return len(groups)


def add_dit_network(parts: dict, family, net_args, lrs: dict[str, float], compute_dtype: str = "float32",
                    ) -> dict[str, list[str]]:
    """Inject adapters into the transformer and (unless U-Net only or lr 0) the text encoders; return the
    adapted module paths per part. Every other parameter of every part (the VAE included) is frozen."""
    adapted: dict[str, list[str]] = {}
    for part in parts.values():
        if isinstance(part, nn.Module):
            part.requires_grad_(False)
    for part in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"):
        model = parts.get(part)
        if model is None:
            continue
        if lrs.get(part, 0) == 0 or (part != "transformer" and net_args.train_unet_only):
            continue
        if part == "transformer":
            names = transformer_targets(model, family, net_args)
        else:
            names = kohya_targets(model, T5_CLASSES if part == family.t5_part else TE_CLASSES)
        if not names:
            continue
        quant = net_args.quantize if part == "transformer" else "none"
        config = LoraConfig(r=net_args.dim, alpha=net_args.alpha, dropout=net_args.dropout, target_modules=names,
                            variant=net_args.module, quantize=quant, compute_dtype=compute_dtype)
        inject(model, config, ADAPTER)
        if part == "transformer" and not net_args.split_qkv:
            tie_fused(model, names)
        if net_args.rank_dropout or net_args.module_dropout:
            add_dropouts([layer.adapters[ADAPTER] for _, layer in lora_layers(model)], net_args.rank_dropout,
                         net_args.module_dropout)
        adapted[part] = names
    return adapted
