"""Prompt text -> weighted token chunks, exactly as A1111 reads it (``modules/prompt_parser.py``,
``modules/sd_hijack_clip.py``), plus ComfyUI's weighting for ``syntax="comfyui"``.

- Emphasis: ``(a)`` x1.1, ``[a]`` /1.1, ``(a:w)`` xw (nests multiply), ``\\(`` literal, ``BREAK`` new chunk.
- Chunks: 75 tokens + BOS/EOS, padded with EOS (the pad id after the first EOS when the tokenizer's pad
  differs, as SD2/SDXL-G); a chunk that fills moves the text after a comma in its last 20 tokens on.
- "Original" emphasis: ``m0 = z.mean(); z *= w; z *= m0 / z.mean()`` per chunk; "No norm": ``z *= w``.
- ComfyUI: ``(a:w)`` *sets* the weight, ``[ ]`` are literal, ``z = z0 + w (z - z0)`` with z0 the empty prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

re_attention = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:
""", re.X)
re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)
CHUNK = 75
COMMA_BACKTRACK = 20
EMPHASIS = ("Original", "No norm")
SYNTAXES = ("a1111", "comfyui")


class PromptSyntaxError(ValueError):
    """Malformed prompt text; the message quotes the text with a caret under the offending character."""

    def __init__(self, text: str, pos: int, what: str):
        super().__init__(f"{what} at character {pos + 1}:\n  {text}\n  {' ' * pos}^")
        self.pos = pos


def parse_prompt_attention(text: str) -> list[list]:
    """[[text, weight], ...] by A1111's rules (its examples are the tests); ``["BREAK", -1]`` separates chunks."""
    res, round_brackets, square_brackets = [], [], []

    def multiply_range(start, multiplier):
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in re_attention.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_brackets.append(len(res))
        elif piece == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            try:
                value = float(weight)
            except ValueError:  # A1111 crashes here ("1.2.3"); say where instead
                raise PromptSyntaxError(text, m.start(1), f"emphasis weight {weight!r} is not a number") from None
            multiply_range(round_brackets.pop(), value)
        elif piece == ")" and round_brackets:
            multiply_range(round_brackets.pop(), 1.1)
        elif piece == "]" and square_brackets:
            multiply_range(square_brackets.pop(), 1 / 1.1)
        else:
            parts = re_break.split(piece)
            for i, part in enumerate(parts):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for pos in round_brackets:
        multiply_range(pos, 1.1)
    for pos in square_brackets:
        multiply_range(pos, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0  # merge runs of equal weight
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


def parse_comfyui(text: str, weight: float = 1.0) -> list[list]:
    """ComfyUI's ``token_weights``: ``(a)`` x1.1, ``(a:w)`` sets w, ``\\(`` literal, ``[ ]`` plain text."""
    out, depth, start, plain = [], 0, 0, []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "()":
            if depth == 0:
                plain.append(text[i + 1])
            i += 2
            continue
        if c == "(":
            if depth == 0:
                if plain:
                    out.append(["".join(plain), weight])
                    plain = []
                start = i
            depth += 1
        elif c == ")" and depth > 0:
            depth -= 1
            if depth == 0:
                inner, w = text[start + 1:i], weight * 1.1
                colon = inner.rfind(":")
                if colon > 0:
                    try:
                        w, inner = float(inner[colon + 1:]), inner[:colon]
                    except ValueError:
                        pass
                out += parse_comfyui(inner, w)
        elif depth == 0:
            plain.append(c)
        i += 1
    if depth:  # unclosed: ComfyUI keeps the rest as text
        out.append([text[start:].replace("\\(", "(").replace("\\)", ")"), weight])
    elif plain:
        out.append(["".join(plain), weight])
    return out or [["", weight]]


@dataclass
class Chunk:
    """77 token ids and multipliers; ``fixes`` = [(offset, vectors)] of textual-inversion embeddings."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, object]] = field(default_factory=list)


def tokenize_chunks(parsed: list[list], tokenizer, embeddings=None) -> list[Chunk]:
    """A1111's ``tokenize_line``: pack weighted pieces into [BOS]+75+[EOS] chunks.

    ``embeddings`` (an :class:`~lorakit.sd.embeddings.EmbeddingDB` or None) replaces a name's tokens with
    its vectors (placeholder id 0, weighted like the text around it).
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.get_vocab().get(",</w>")
    texts = [t for t, w in parsed]
    tokenized = tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"] if texts else []
    chunks, chunk, last_comma = [], Chunk(), -1

    def next_chunk():
        nonlocal chunk, last_comma
        pad = CHUNK - len(chunk.tokens)
        chunk.tokens = [bos] + chunk.tokens + [eos] * pad + [eos]
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0] * (pad + 1)
        chunk.fixes = [(off + 1, vec) for off, vec in chunk.fixes]
        chunks.append(chunk)
        chunk, last_comma = Chunk(), -1

    for tokens, (text, weight) in zip(tokenized, parsed, strict=True):
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        pos = 0
        while pos < len(tokens):
            token = tokens[pos]
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (len(chunk.tokens) == CHUNK and last_comma != -1
                  and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK):
                cut = last_comma + 1
                moved = chunk.tokens[cut:], chunk.multipliers[cut:], [(o - cut, v) for o, v in chunk.fixes if o >= cut]
                chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                chunk.fixes = [(o, v) for o, v in chunk.fixes if o < cut]
                next_chunk()
                chunk.tokens, chunk.multipliers, chunk.fixes = list(moved[0]), list(moved[1]), moved[2]
            if len(chunk.tokens) == CHUNK:
                next_chunk()
            found = embeddings.find_at(tokens, pos) if embeddings is not None else None
            if found is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
                pos += 1
                continue
            vectors, used = found
            if len(chunk.tokens) + len(vectors) > CHUNK:
                next_chunk()
            chunk.fixes.append((len(chunk.tokens), vectors))
            chunk.tokens += [0] * len(vectors)
            chunk.multipliers += [weight] * len(vectors)
            pos += used
    if chunk.tokens or not chunks:
        next_chunk()
    pad = tokenizer.pad_token_id
    if pad is not None and pad != eos:  # OpenCLIP (SD2, SDXL-G): pad id after the first EOS
        for c in chunks:
            first = c.tokens.index(eos)
            c.tokens[first + 1:] = [pad] * (len(c.tokens) - first - 1)
    return chunks


def parse(text: str, syntax: str = "a1111") -> list[list]:
    if syntax not in SYNTAXES:
        raise ValueError(f"syntax={syntax!r}: expected one of {SYNTAXES}.")
    return parse_prompt_attention(text) if syntax == "a1111" else parse_comfyui(text)


def apply_weights(z, weights, *, emphasis: str = "Original", syntax: str = "a1111", z_empty=None):
    """Per-token weights on one chunk's encoder output ``z`` [B, 77, D] (``weights`` [B, 77]).

    A1111 "Original": scale then restore the chunk mean; "No norm": scale only.
    ComfyUI: ``z_empty + w (z - z_empty)`` (``z_empty``: the empty prompt's chunk).
    """
    if syntax == "comfyui":
        if z_empty is None:
            raise ValueError("syntax='comfyui' needs z_empty, the encoding of the empty prompt.")
        w = weights[..., None].to(z.dtype)
        return torch.where(w == 1, z, z_empty + w * (z - z_empty))  # ComfyUI leaves weight-1 tokens untouched
    if emphasis not in EMPHASIS:
        raise ValueError(f"emphasis={emphasis!r}: expected one of {EMPHASIS}.")
    mean = z.mean()
    z = z * weights[..., None].to(z.dtype)
    return z * (mean / z.mean()) if emphasis == "Original" else z
