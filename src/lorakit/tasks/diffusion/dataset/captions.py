"""Caption processing in kohya's order (``BaseDataset.process_caption``), with an explicit RNG.

Per draw: prefix/suffix -> caption dropout (rate, every N epochs) -> wildcards ``{a|b}`` (or the first
line) -> when shuffling, tag dropout or token warm-up is on: split into fixed head / flexible / fixed
tail tags, warm-up truncation, shuffle, tag dropout, join with ``", "`` -> secondary separator.
The RNG is made per (seed, epoch, position), so a resumed run draws the same captions.
"""

from __future__ import annotations

import math
import random
import re

WILDCARD = re.compile(r"\{([^}]+)\}")


def is_static(options) -> bool:
    """True when a caption never changes between draws (its text-encoder output can be cached)."""
    return not (options.shuffle_caption or options.caption_dropout_rate > 0 or options.caption_dropout_every_n_epochs > 0
                or options.caption_tag_dropout_rate > 0 or options.token_warmup_step > 0 or options.enable_wildcard)


def warmup_steps(options, max_train_steps: int | None) -> int:
    """Token warm-up length in steps: values below 1 are a fraction of the run (kohya)."""
    step = options.token_warmup_step
    if 0 < step < 1:
        return math.floor(step * (max_train_steps or 0))
    return int(step)


def expand_wildcards(caption: str, rng: random.Random) -> str:
    """One random line of a multi-line caption, then one option of each ``{a|b|c}``; ``{{``/``}}`` are braces."""
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    open_, close = "⦅", "⦆"
    while open_ in caption or close in caption:
        open_, close = open_ + "⦅", close + "⦆"
    caption = caption.replace("{{", open_).replace("}}", close)
    caption = WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_, "{").replace(close, "}")


def split_tags(caption: str, options) -> tuple[list[str], list[str], list[str]]:
    """(fixed head, flexible, fixed tail) tags: by ``keep_tokens_separator`` when it occurs, else the
    first ``keep_tokens`` tags are the head."""
    sep, keep_sep = options.caption_separator, options.keep_tokens_separator
    if keep_sep and keep_sep in caption:
        fixed, flex = caption.split(keep_sep, 1)
        tail: list[str] = []
        if keep_sep in flex:
            flex, tail_text = flex.split(keep_sep, 1)
            tail = [t.strip() for t in tail_text.split(sep) if t.strip()]
        return ([t.strip() for t in fixed.split(sep) if t.strip()], [t.strip() for t in flex.split(sep) if t.strip()],
                tail)
    tokens = [t.strip() for t in caption.strip().split(sep)]
    k = options.keep_tokens
    return (tokens[:k], tokens[k:], []) if k > 0 else ([], tokens, [])


def process_caption(caption: str, options, rng: random.Random, *, epoch: int, step: int,
                    max_train_steps: int | None = None) -> str:
    """The caption one sample trains with. ``epoch`` counts from 1 as kohya's does; ``step`` is the
    optimizer step (token warm-up)."""
    if options.caption_prefix:
        caption = options.caption_prefix + " " + caption
    if options.caption_suffix:
        caption = caption + " " + options.caption_suffix
    dropped = options.caption_dropout_rate > 0 and rng.random() < options.caption_dropout_rate
    every = options.caption_dropout_every_n_epochs
    if dropped or (every > 0 and epoch % every == 0):
        return ""
    if options.enable_wildcard:
        caption = expand_wildcards(caption, rng)
    else:
        caption = caption.split("\n")[0]
    warmup = warmup_steps(options, max_train_steps)
    if options.shuffle_caption or warmup > 0 or options.caption_tag_dropout_rate > 0:
        fixed, flex, tail = split_tags(caption, options)
        if warmup and step < warmup:
            keep = math.floor(step * ((len(flex) - options.token_warmup_min) / warmup)) + options.token_warmup_min
            flex = flex[:keep]
        if options.shuffle_caption:
            rng.shuffle(flex)
        if options.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= options.caption_tag_dropout_rate]
        caption = ", ".join(fixed + flex + tail)
    if options.secondary_separator:
        caption = caption.replace(options.secondary_separator, options.caption_separator)
    return caption


def tag_frequency(captions: list[str]) -> dict[str, int]:
    """kohya's ``ss_tag_frequency`` counts for one folder: comma tags, stripped, lower-cased."""
    freq: dict[str, int] = {}
    for caption in captions:
        for tag in caption.split(","):
            tag = tag.strip().lower()
            if tag:
                freq[tag] = freq.get(tag, 0) + 1
    return freq
