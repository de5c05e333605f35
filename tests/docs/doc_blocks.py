"""The README's and docs' fenced code blocks, and the shell commands in them.

A ```bash (or sh/shell) block holds commands the test suite runs; a ```console block holds commands it does
not run (they need a GPU, real model weights, several machines, or minutes on an idle machine), and the docs
say so next to it. Any other block (yaml, python, text ...) must not hold a shell command.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGS = {"bash", "sh", "shell"}
NOT_RUN_NOTE = "not run by the tests"
# first words of a line that is a shell command (what must not hide in a yaml/text/plain block)
COMMAND_START = re.compile(r"^\s*(\$ )?(lorakit|make|torchrun|pip|python3?|\.venv/bin/\w+|\.\./\.venv/bin/\w+|cd|curl"
                           r"|huggingface-cli|[A-Z_]+=\S+ +\S)( |$)")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    lines: list[str]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence[0] * len(fence)):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        out.append(Block(path, i + 1, lang.lower(), body))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for p in doc_files() for b in blocks(p)]


def commands(block: Block) -> list[str]:
    """Each command of a shell block as one normalised string (continuations joined, comments dropped)."""
    out, pending = [], ""
    for line in block.lines:
        line = line[2:] if line.startswith("$ ") else line
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        tokens = shlex.split(pending + line, comments=True)
        pending = ""
        if tokens:
            out.append(shlex.join(tokens))
    return out


def shown_commands() -> dict[str, list[str]]:
    """Every command of every run block -> where it is shown."""
    found: dict[str, list[str]] = {}
    for b in all_blocks():
        if b.lang in RUN_LANGS:
            for cmd in commands(b):
                found.setdefault(cmd, []).append(b.where)
    return found


def slug(heading: str) -> str:
    """The anchor MkDocs (and, for these headings, GitHub) gives a heading."""
    from markdown.extensions.toc import slugify

    return slugify(re.sub(r"[`*]", "", heading), "-")


def anchors(path: Path) -> set[str]:
    inside, heads = False, set()
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside and line.startswith("#"):
            heads.add(slug(line.lstrip("#").strip()))
    return heads
