"""Dataset-wide tag tools on caption files (the A1111 Dataset Tag Editor's jobs): a tag table with counts,
rename / delete / add a tag everywhere, regex find and replace with a preview, a trigger word in front
(respecting ``keep_tokens``), and captions over the text encoder's 75 tokens.

Tags are the caption split at ``caption_separator`` (``,``) as kohya splits it, stripped; a changed
line is joined with ``", "``. Each line of a multi-line (wildcard) caption is one caption. Every
change is planned first (``(image, old text, new text)``), previewed, then written as one undoable
batch (:mod:`lorakit.ui.captions`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from . import captions

SEP = ","
REGEX_TIMEOUT = 2.0  # seconds per caption: a pathological pattern cannot hang the server
MAX_PATTERN = 500


def split(line: str, sep: str = SEP) -> list[str]:
    return [t.strip() for t in line.split(sep) if t.strip()]


def join(tags: list[str], sep: str = SEP) -> str:
    return f"{sep} ".join(tags)


def _map_lines(text: str | None, fn) -> str | None:
    if text is None:
        return None
    return "\n".join(fn(line) for line in text.split("\n"))


def table(images: list[Path], sep: str = SEP) -> list[dict]:
    """Tags with the number of captions holding each, most frequent first."""
    counts: Counter = Counter()
    for image in images:
        text = captions.read(image)
        if text:
            counts.update({t for line in text.split("\n") for t in split(line, sep)})
    return [{"tag": t, "count": c} for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def plan(images: list[Path], fn) -> list[tuple[Path, str | None, str | None]]:
    """``(image, old, new)`` for every caption that ``fn(line) -> line`` changes."""
    out = []
    for image in images:
        old = captions.read(image)
        new = _map_lines(old, fn)
        if new is not None and not new.strip():
            new = None
        if new != old:
            out.append((image, old, new))
    return out


def rename(old: str, new: str, sep: str = SEP):
    """The line function renaming tag ``old`` to ``new`` (merged when ``new`` is already there)."""
    _check_tag(old)
    _check_tag(new)

    def fn(line):
        tags = split(line, sep)
        if old not in tags:
            return line
        out = []
        for t in tags:
            t = new if t == old else t
            if t not in out:
                out.append(t)
        return join(out, sep)
    return fn


def delete(tag: str, sep: str = SEP):
    _check_tag(tag)
    return lambda line: join([t for t in split(line, sep) if t != tag], sep) if tag in split(line, sep) else line


def add(tag: str, front: bool = False, sep: str = SEP):
    _check_tag(tag)

    def fn(line):
        tags = split(line, sep)
        if tag in tags:
            return line
        return join([tag] + tags if front else tags + [tag], sep)
    return fn


def trigger(word: str, keep_tokens: int = 0, keep_sep: str = "", sep: str = SEP):
    """Put ``word`` first: at the front of the fixed part when the caption uses ``keep_tokens_separator``,
    else as the first tag (moved there when it is elsewhere in the caption)."""
    _check_tag(word)

    def fn(line):
        if keep_sep and keep_sep in line:
            head, rest = line.split(keep_sep, 1)
            return f"{join([word] + [t for t in split(head, sep) if t != word], sep)} {keep_sep} {rest.strip()}"
        tags = split(line, sep)
        if tags and tags[0] == word:
            return line
        return join([word] + [t for t in tags if t != word], sep)
    return fn


def trigger_note(keep_tokens: int, keep_sep: str, shuffle: bool) -> str:
    """What the trigger's place means for training with these caption settings."""
    if keep_sep:
        return f"keep_tokens_separator {keep_sep!r}: the trigger is in the fixed part of captions that use it."
    if keep_tokens == 0:
        return ("keep_tokens is 0: with shuffle_caption the trigger is shuffled like any tag; set data.keep_tokens: 1 "
                "to keep it first." if shuffle else "keep_tokens is 0 (captions are not shuffled, so it stays first).")
    return (f"keep_tokens is {keep_tokens}: the trigger is now the first of the {keep_tokens} fixed tags; set "
            f"data.keep_tokens: {keep_tokens + 1} if the tags that were fixed before should stay fixed too.")


def regex_fn(pattern: str, replacement: str, ignore_case: bool = False, timeout: float = REGEX_TIMEOUT):
    """The line function of a regex replacement (the ``regex`` module, with a time limit per caption)."""
    import regex

    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
        raise ValueError(f"pattern: expected a regular expression of 1 to {MAX_PATTERN} characters.")
    try:
        compiled = regex.compile(pattern, regex.IGNORECASE if ignore_case else 0)
    except (regex.error, IndexError) as exc:
        raise ValueError(f"pattern {pattern!r} / replacement {replacement!r}: {exc}") from None

    def fn(line):
        try:
            return compiled.sub(replacement, line, timeout=timeout)
        except TimeoutError:
            raise ValueError(f"pattern {pattern!r} took over {timeout:g} s on one caption; simplify it.") from None
        except (regex.error, IndexError) as exc:  # a group the replacement names but the pattern lacks
            raise ValueError(f"replacement {replacement!r} for pattern {pattern!r}: {exc}") from None
    return fn


def digest(changes) -> str:
    """A fingerprint of a planned change set: applying checks it is still the change set previewed."""
    rows = [[str(image), old, new] for image, old, new in changes]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def token_lengths(images: list[Path], tokenizer, limit: int = 75) -> list[dict]:
    """Captions longer than ``limit`` tokens for ``tokenizer`` (the model's; BOS/EOS not counted)."""
    out = []
    for image in images:
        text = captions.read(image)
        for line in (text or "").split("\n"):
            if not line:
                continue
            n = len(tokenizer(line, add_special_tokens=False, truncation=False)["input_ids"])
            if n > limit:
                out.append({"image": image, "tokens": n, "line": line})
    return out


def load_tokenizer(model_path: str | Path):
    """The first text encoder's tokenizer of a diffusers model directory."""
    from transformers import AutoTokenizer

    folder = Path(model_path) / "tokenizer"
    if not folder.is_dir():
        raise FileNotFoundError(f"{model_path}: no tokenizer/ folder (expected a diffusers model directory).")
    return AutoTokenizer.from_pretrained(str(folder))


def _check_tag(tag: str) -> None:
    if not isinstance(tag, str) or not tag.strip() or SEP in tag or "\n" in tag or len(tag) > 300:
        raise ValueError(f"tag {tag!r}: expected non-empty text without commas or newlines (at most 300 characters).")
