"""``<lora:name:te:unet>`` tags (A1111 ``extensions-builtin/Lora``) and live LoRA stacks on a pipeline.

Tag: ``<lora:name[:te[:unet[:dyn]]]>`` or named ``te=``, ``unet=``, ``dyn=``; ``te`` defaults to 1, ``unet``
to ``te``; ``<lyco:...>`` is the same. Every other ``<name:...>`` tag is removed from the text too, as
A1111 does. Names are file stems found by a recursive walk of the LoRA directories, the file's
``ss_output_name`` alias, or a path inside a LoRA directory; nothing outside them. Stacking is additive (ComfyUI's LoraLoader with
``strength_clip`` = te, ``strength_model`` = unet): W = W0 + Σ mult_i ΔW_i.

:class:`LoraStack` keeps every file loaded once per pipeline as a live adapter; a new set of strengths
is only ``set_active_adapters`` (no reload, no merge/unmerge), and strength 0 leaves a part untouched.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..formats.sd_io import read_lora
from ..formats.sd_keys import SDXL, layout_from_config
from ..model import active_adapters, set_active_adapters
from .lora import MODEL_PARTS, check_family, file_parts, load_lora, model_parts
from .prompt import PromptSyntaxError

re_tag = re.compile(r"<(\w+):([^>]+)>")
NETWORK_TAGS = ("lora", "lyco")
SUFFIXES = (".safetensors", ".pt", ".ckpt")


@dataclass
class LoraTag:
    """One LoRA request: ``name`` (tag name or path), text-encoder and U-Net multipliers."""

    name: str
    te: float = 1.0
    unet: float | None = None

    def __post_init__(self):
        if self.unet is None:
            self.unet = self.te


def _number(text: str, prompt: str, pos: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        raise PromptSyntaxError(prompt, pos, f"LoRA tag {what} {text!r} is not a finite number")
    return value


def extract_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """(prompt without any ``<name:...>`` tag, the LoRA tags). A1111 removes every extra-network tag from the
    text it encodes (``<hypernet:...>`` and tags of unknown networks too); :func:`other_tags` lists the
    ones that are not LoRAs, which lorakit cannot apply."""
    tags = []
    for m in re_tag.finditer(prompt):
        if m.group(1) not in NETWORK_TAGS:
            continue
        items = m.group(2).split(":")
        positional, named = [], {}
        offset = m.start(2)
        for item in items:
            if "=" in item:
                key, _, value = item.partition("=")
                if key not in ("te", "unet", "dyn"):
                    raise PromptSyntaxError(prompt, offset, f"unknown LoRA tag argument {key!r} (expected te=, "
                                                            "unet= or dyn=)")
                named[key] = _number(value, prompt, offset + len(key) + 1, key)
            else:
                positional.append((item, offset))
            offset += len(item) + 1
        if not positional or not positional[0][0].strip():
            raise PromptSyntaxError(prompt, m.start(2), "LoRA tag without a name")
        te = _number(positional[1][0], prompt, positional[1][1], "te strength") if len(positional) > 1 else 1.0
        te = named.get("te", te)
        unet = _number(positional[2][0], prompt, positional[2][1], "unet strength") if len(positional) > 2 else te
        tags.append(LoraTag(positional[0][0].strip(), te, named.get("unet", unet)))
    rest = re_tag.sub("", prompt)
    start = rest.find("<lora:") if "<lora:" in rest else rest.find("<lyco:")
    if start != -1:
        raise PromptSyntaxError(prompt, prompt.find(rest[start:start + 6]), "LoRA tag is not closed with '>'")
    return rest, tags


def other_tags(prompt: str) -> list[str]:
    """The ``<name:...>`` tags of a prompt that are not LoRA tags (``<hypernet:...>``, unknown networks)."""
    return [m.group(0) for m in re_tag.finditer(prompt) if m.group(1) not in NETWORK_TAGS]


def _alias(path: Path) -> str | None:
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("ss_output_name")
    except Exception:  # noqa: BLE001  (an unreadable file is reported when it is used)
        return None


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symlinks followed) lies in ``root`` (already resolved)."""
    return path.resolve().is_relative_to(root)


class LoraIndex:
    """Name -> file for LoRA directories (recursive): file stems first, then unique ``ss_output_name`` aliases,
    then paths relative to a directory (``sub/name``).

    Prompt text names files only inside these directories: absolute paths, ``..`` that leaves them and
    symlinks that point outside are refused, so a prompt cannot read other files."""

    def __init__(self, directories=None):
        self.by_stem: dict[str, Path] = {}
        self.by_alias: dict[str, Path] = {}
        if directories is None:
            directories = []
        elif isinstance(directories, (str, Path)):
            directories = [directories]
        self.directories = [Path(d) for d in directories]
        self.outside: dict[str, Path] = {}  # stems of symlinks that leave their directory
        aliases: dict[str, list[Path]] = {}
        for directory in self.directories:
            if not directory.is_dir():
                raise ValueError(f"LoRA directory {directory} does not exist.")
            root = directory.resolve()
            for p in sorted(directory.rglob("*")):
                if p.suffix not in SUFFIXES or not p.is_file():
                    continue
                if not _inside(p, root):
                    self.outside.setdefault(p.stem, p)
                    continue
                self.by_stem.setdefault(p.stem, p)
                if (alias := _alias(p)) is not None:
                    aliases.setdefault(alias, []).append(p)
        self.by_alias = {a: ps[0] for a, ps in aliases.items() if len(ps) == 1}  # duplicates: file names only

    @property
    def directory(self) -> Path | None:
        return self.directories[0] if self.directories else None

    def _relative(self, name: str) -> Path | None:
        """``name`` as a path relative to one of the directories (suffix optional), refused if it leaves it."""
        if Path(name).is_absolute() or name.startswith("~"):
            raise ValueError(f"LoRA {name!r}: a prompt may not name files by absolute path; put the file in a LoRA "
                             "directory (--lora-dir) and name it by its file name.")
        for directory in self.directories:
            root = directory.resolve()
            for cand in [directory / name] + [directory / f"{name}{s}" for s in SUFFIXES]:
                if cand.suffix in SUFFIXES and cand.is_file():
                    if not _inside(cand, root):
                        raise ValueError(f"LoRA {name!r} resolves to {cand.resolve()}, outside the LoRA directory "
                                         f"{directory}; prompts may only name files inside the LoRA directories.")
                    return cand
        return None

    def resolve(self, name: str) -> Path:
        """The file for a tag name; unknown -> error listing the closest names."""
        if name in self.by_stem:
            return self.by_stem[name]
        if name in self.by_alias:
            return self.by_alias[name]
        if name in self.outside:
            raise ValueError(f"LoRA {name!r} is a symlink to {self.outside[name].resolve()}, outside the LoRA "
                             "directories; prompts may only name files inside them (copy or move the file there).")
        found = self._relative(name)
        if found is not None:
            return found
        if not self.directories:
            raise ValueError(f"LoRA {name!r}: no LoRA directory was given; pass --lora-dir (lora_dir=) with the "
                             f"folder that holds {name}.safetensors.")
        known = sorted(set(self.by_stem) | set(self.by_alias))
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.3)
        hint = f" Closest: {', '.join(close)}." if close else f" Known: {', '.join(known[:20]) or 'none'}."
        where = ", ".join(str(d) for d in self.directories)
        raise ValueError(f"unknown LoRA {name!r} in {where}.{hint}")


class LoraStack:
    """The LoRA files live on one pipeline: each loaded once, then switched by strengths only."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.parts = model_parts(pipe)
        self.names: dict[Path, str] = {}  # resolved file -> adapter name
        self.holders: dict[str, set[str]] = {}  # adapter name -> parts that hold its modules

    @classmethod
    def of(cls, pipe) -> LoraStack:
        """The stack attached to ``pipe`` (created on first use)."""
        stack = getattr(pipe, "_lorakit_loras", None)
        if stack is None:
            stack = cls(pipe)
            pipe._lorakit_loras = stack
        return stack

    def load(self, path: Path) -> str:
        path = Path(path).resolve()
        if path not in self.names:
            name = re.sub(r"\W", "_", path.stem)
            name = f"lora{len(self.names)}_{name}"
            lf = self._read(path)
            load_lora(self.parts, [lf], names=[name])
            self.names[path] = name
            self.holders[name] = file_parts(lf, self.parts)  # no module walk per switch to find them
        return self.names[path]

    def _read(self, path: Path):
        """Read with the model's U-Net layout; a file that does not map is first checked for its family,
        so an SDXL file on SD1.5 says so instead of listing unmapped keys."""
        layout = layout_from_config(self.parts["unet"].config) if "unet" in self.parts else SDXL
        try:
            lf = read_lora(path, layout)
        except (KeyError, ValueError) as e:
            try:
                other = read_lora(path, SDXL)
            except (KeyError, ValueError):
                raise e from None
            check_family(other, self.parts, str(path))
            raise
        check_family(lf, self.parts, str(path))
        return lf

    def activate(self, requests: list[tuple[Path, float, float]]) -> None:
        """Make exactly these (file, te, unet) active among the stack's files; repeated files add their
        strengths. Adapters the stack did not load (e.g. one being trained) keep their state."""
        names = [(self.load(p), te, unet) for p, te, unet in requests]  # loading checks family before changes
        owned = set(self.names.values())
        for part, model in self.parts.items():
            strengths = {n: s for n, s in active_adapters(model).items() if n not in owned}
            for name, te, unet in names:
                s = unet if part in MODEL_PARTS else te
                if part in self.holders[name]:
                    strengths[name] = strengths.get(name, 0.0) + s
            set_active_adapters(model, {n: s for n, s in strengths.items() if s != 0 or n not in owned})
