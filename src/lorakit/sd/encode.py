"""Text-encoder conditioning from weighted chunks (A1111 ``sd_hijack_clip``), for SD1/SD2 and SDXL.

Each 77-token chunk is encoded on its own and the outputs concatenated (77·k tokens). Layer choice
(A1111 "Clip skip" N, default 1): SD1/SD2 take ``last_hidden_state`` for N=1, else
``final_layer_norm(hidden_states[-N])``; SDXL takes ``hidden_states[-(N+1)]`` of both encoders, no
final norm (diffusers' ``clip_skip = N - 1``), concatenated on features; SDXL's pooled vector is the
projected output of chunk 0 of the second encoder. Textual-inversion vectors replace the placeholder
token embeddings through a forward hook that lives only for the call.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .prompt import Chunk, apply_weights, parse, tokenize_chunks


@dataclass
class Cond:
    """Conditioning of one prompt: ``embeds`` [1, 77k, D], ``pooled`` [1, P] (SDXL) or None."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


def encoders(pipe) -> list[tuple]:
    """[(tokenizer, text_encoder)] present on the pipeline, in order."""
    pairs = [(getattr(pipe, t, None), getattr(pipe, e, None))
             for t, e in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))]
    return [(t, e) for t, e in pairs if t is not None and e is not None]


@contextlib.contextmanager
def _fixes(encoder, fixes):
    """Replace token-embedding rows with textual-inversion vectors during one forward."""
    if not fixes:
        yield
        return

    def hook(_module, _inputs, out):
        out = out.clone()
        for offset, vec in fixes:
            out[0, offset:offset + len(vec)] = vec.to(out.dtype)
        return out

    handle = encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def clip_skip_limit(pipe) -> int:
    """The largest Clip skip that still picks a transformer layer's output: the number of layers (SD1/SD2),
    one less for SDXL, whose Clip skip 1 already takes the penultimate layer."""
    pairs = encoders(pipe)
    sdxl = len(pairs) == 2
    return min(e.config.num_hidden_layers - (1 if sdxl else 0) for _, e in pairs)


def check_clip_skip(pipe, clip_skip: int | None) -> int:
    """``clip_skip`` (None -> 1) if this model has that layer, else one error naming the range."""
    clip_skip = 1 if clip_skip is None else int(clip_skip)
    limit = clip_skip_limit(pipe)
    if not 1 <= clip_skip <= limit:
        raise ValueError(f"clip_skip={clip_skip}: this model's text encoder allows Clip skip 1 (last layer) to "
                         f"{limit}; A1111 numbering starts at 1 (2 = penultimate layer).")
    return clip_skip


def _layer(encoder, out, clip_skip: int, sdxl: bool):
    if sdxl:
        return out.hidden_states[-(clip_skip + 1)]
    if clip_skip <= 1:
        return out.last_hidden_state
    text_model = getattr(encoder, "text_model", encoder)  # transformers 5 flattened CLIPTextModel
    return text_model.final_layer_norm(out.hidden_states[-clip_skip])


def _encode_chunk(encoder, chunk: Chunk, clip_skip: int, sdxl: bool):
    device = encoder.device
    ids = torch.tensor([chunk.tokens], device=device)
    with _fixes(encoder, [(o, v.to(device)) for o, v in chunk.fixes]):
        out = encoder(ids, output_hidden_states=True)
    pooled = getattr(out, "text_embeds", None)
    return _layer(encoder, out, clip_skip, sdxl), pooled


@torch.no_grad()
def encode_prompt(pipe, text: str, *, clip_skip: int | None = None, emphasis: str = "Original",
                  syntax: str = "a1111", embeddings=None) -> Cond:
    """Encode ``text`` (LoRA tags already removed) as A1111 does; see the module docstring."""
    clip_skip = check_clip_skip(pipe, clip_skip)
    pairs = encoders(pipe)
    sdxl = len(pairs) == 2
    parsed = parse(text, syntax)
    per_encoder, pooled = [], None
    for index, (tokenizer, encoder) in enumerate(pairs):
        view = None
        if embeddings is not None:
            view = embeddings.for_encoder(tokenizer, index, encoder.get_input_embeddings().weight.shape[1], len(pairs))
        chunks = tokenize_chunks(parsed, tokenizer, view)
        empty = None
        if syntax == "comfyui":
            empty = _encode_chunk(encoder, tokenize_chunks([["", 1.0]], tokenizer)[0], clip_skip, sdxl)[0]
        zs = []
        for i, chunk in enumerate(chunks):
            z, pool = _encode_chunk(encoder, chunk, clip_skip, sdxl)
            weights = torch.tensor([chunk.multipliers], device=z.device)
            zs.append(apply_weights(z, weights, emphasis=emphasis, syntax=syntax, z_empty=empty))
            if i == 0 and index == len(pairs) - 1 and sdxl:
                pooled = pool
        per_encoder.append(torch.cat(zs, dim=1))
    return Cond(torch.cat(per_encoder, dim=-1), pooled)


def pad_pair(cond: Cond, uncond: Cond, empty: Cond) -> tuple[Cond, Cond]:
    """Pad the shorter conditioning (a batch of any size) with chunks of the empty prompt so both have 77·k
    tokens (A1111)."""
    def padded(c: Cond, length: int) -> Cond:
        missing = (length - c.embeds.shape[1]) // empty.embeds.shape[1]
        if missing <= 0:
            return c
        chunk = empty.embeds.expand(c.embeds.shape[0], -1, -1)
        return Cond(torch.cat([c.embeds] + [chunk] * missing, dim=1), c.pooled)

    length = max(cond.embeds.shape[1], uncond.embeds.shape[1])
    return padded(cond, length), padded(uncond, length)
