"""``LoraFileError``: the one error type every LoRA/adapter file reader and tool raises for a bad file.

A ``ValueError`` (so ``except ValueError`` keeps working), whose message names the file, the key or
module at fault, what was found, what was expected and how to fix it.
"""

from __future__ import annotations


class LoraFileError(ValueError):
    """A LoRA, LyCORIS or PEFT file that cannot be read or is inconsistent."""

    def __init__(self, path, problems: list[str] | str, fix: str = ""):
        self.path = str(path)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.fix = fix
        shown = self.problems[:40]
        more = f"\n  ... and {len(self.problems) - 40} more" if len(self.problems) > 40 else ""
        body = shown[0] if len(shown) == 1 else "\n  - " + "\n  - ".join(shown)
        super().__init__(f"{self.path}: {body}{more}" + (f"\n{fix}" if fix else ""))

    def __str__(self) -> str:  # KeyError's subclass below would quote the message
        return self.args[0]


class LoraKeyError(LoraFileError, KeyError):
    """Keys that map to no module (also a ``KeyError``, as the readers raised before)."""


def problem(key: str, found: str, expected: str) -> str:
    """One problem line: ``key: found ...; expected ...``."""
    return f"{key}: found {found}; expected {expected}"
