"""A1111's PNG infotext: the ``parameters`` tEXt chunk that A1111, Civitai and others read.

Written as ``create_infotext`` does (prompt; ``Negative prompt:`` line when not empty; ``k: v`` pairs,
values holding ``,``/``:``/newline JSON-quoted) and parsed with ``parse_generation_parameters``' rules.
Hashes as Civitai matches them: Model hash = sha256(file)[:10]; Lora hash = "AutoV3", sha256 of a
safetensors file's tensor data (after the 8-byte length and the header)[:12]; TI hash = sha256(file)[:12].
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..formats._io import atomic_write, safetensors_header_length
from .embeddings import file_sha256

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
re_imagesize = re.compile(r"^(\d+)x(\d+)$")
ORDER = ("Steps", "Sampler", "Schedule type", "CFG scale", "Distilled CFG Scale", "Seed", "Size", "Model hash", "Model",
         "Clip skip",
         "Emphasis", "Lora hashes", "TI hashes")


def quote(value) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def create_infotext(prompt: str, negative: str, params: dict) -> str:
    """The text A1111 writes: known keys first in A1111's order, then the rest; None values dropped."""
    ordered = {k: params[k] for k in ORDER if k in params}
    ordered.update({k: v for k, v in params.items() if k not in ordered})
    body = ", ".join(f"{k}: {quote(v)}" for k, v in ordered.items() if v is not None)
    neg = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt}{neg}\n{body}".strip()


def parse_infotext(text: str) -> dict[str, str]:
    """A1111's ``parse_generation_parameters`` (without its defaults): Prompt, Negative prompt, k: v, Size-1/2."""
    res: dict[str, str] = {}
    prompt, negative, done = "", "", False
    *lines, last = text.strip().split("\n")
    if len(re_param.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done = True
            line = line[16:].strip()
        if done:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"], res["Negative prompt"] = prompt, negative
    for k, v in re_param.findall(last):
        v = unquote(v) if v[:1] == '"' and v[-1:] == '"' else v
        m = re_imagesize.match(v)
        if m is not None:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    return res


def hash_list(pairs) -> str | None:
    """``"name: hash, name2: hash2"`` (A1111's Lora/TI hashes value) or None when empty."""
    pairs = list(pairs)
    return ", ".join(f"{n.replace(':', '').replace(',', '')}: {h}" for n, h in pairs) if pairs else None


def parse_hash_list(value: str) -> dict[str, str]:
    return dict(item.split(": ", 1) for item in value.split(", ") if ": " in item)


_hashes: dict[tuple, str] = {}


def _cached(kind: str, path: Path, compute) -> str:
    """A file's hash, computed once per (path, size, mtime): a grid hashes each file once, not per cell."""
    stat = path.stat()
    key = (kind, str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        _hashes[key] = compute(path)
    return _hashes[key]


def lora_hash(path) -> str:
    """AutoV3 (what Civitai matches): sha256 of the tensor data of a safetensors file, first 12 hex."""
    return _cached("lora", Path(path), _autov3)


def _autov3(path: Path) -> str:
    if path.suffix != ".safetensors":
        return file_sha256(path)[:12]
    n = safetensors_header_length(path)  # a file that is not safetensors is refused, not hashed from a bogus offset
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(8 + n)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def model_hash(path) -> str | None:
    """A1111's Model hash (sha256 of the checkpoint file, first 10 hex); None for a diffusers directory."""
    path = Path(path)
    return _cached("model", path, lambda p: file_sha256(p)[:10]) if path.is_file() else None


def free_path(path, overwrite: bool = False) -> Path:
    """``path`` if it may be written; an existing file is an error unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it, or another name.")
    return path


def save_png(image, path, *, infotext: str | None = None, overwrite: bool = False) -> Path:
    """Write ``image`` as PNG with the ``parameters`` chunk (default: ``image.info['parameters']``), atomically."""
    from PIL.PngImagePlugin import PngInfo

    path = free_path(path, overwrite)
    text = infotext if infotext is not None else image.info.get("parameters")
    info = PngInfo()
    if text:
        info.add_text("parameters", text)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
    return path


def next_free_name(directory, stem: str, suffix: str = ".png") -> Path:
    """``directory/NNNNN-stem.png`` with the next unused 5-digit counter (A1111's naming; never overwrites)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    used = [int(p.name[:5]) for p in directory.iterdir() if p.name[:5].isdigit()]
    return directory / f"{(max(used) + 1 if used else 0):05d}-{stem}{suffix}"
