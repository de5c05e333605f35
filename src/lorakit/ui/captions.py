"""Caption files: atomic writes, an undo history per caption, conflicts between two editors, bulk changes.

A caption is ``image.txt`` beside the image (kohya's folder layout). Every write keeps the text it
replaces on a per-caption undo stack in ``.lorakit/history/<path>.json`` (outside the dataset), so
nothing typed is ever lost: a save made from a stale page (another tab saved first) still wins, as the
later save, and the reply says so; the other tab's text is the top of the undo stack. Bulk changes (tag
tools, regex, trigger word, captioner) share a batch id and can be undone together.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..formats._io import atomic_write, write_json
from .workspace import Workspace

EXTENSION = ".txt"
MAX_CAPTION = 20_000  # characters; a caption is a line of tags, not a document
MAX_HISTORY = 50


def caption_path(image: Path) -> Path:
    return image.with_suffix(EXTENSION)


def version(text: str | None) -> str:
    """A short fingerprint of a caption's text (``""``: no caption file)."""
    return "" if text is None else hashlib.sha1(text.encode()).hexdigest()[:16]


def read(image: Path) -> str | None:
    """The caption file's text without the final newline (``None``: no file)."""
    path = caption_path(image)
    try:
        return path.read_text(encoding="utf-8-sig").rstrip("\r\n")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        return path.read_bytes().decode("utf-8", errors="replace").rstrip("\r\n")


@dataclass
class Saved:
    text: str | None
    version: str
    conflict: bool
    message: str


def _locked(method):
    """Requests run on a thread pool: one caption's read-push-write must not interleave with another's."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return wrapped


class Captions:
    def __init__(self, ws: Workspace):
        self.ws = ws
        self.root = ws.state / "history"
        self.lock = threading.RLock()

    def _history_file(self, image: Path) -> Path:
        return self.root / (self.ws.rel(caption_path(image)) + ".json")

    def history(self, image: Path) -> list[dict]:
        path = self._history_file(image)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        return data if isinstance(data, list) else []

    def _push(self, image: Path, text: str | None, batch: str | None) -> None:
        stack = self.history(image) + [{"text": text, "time": time.time(), "batch": batch}]
        path = self._history_file(image)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(stack[-MAX_HISTORY:])))

    @staticmethod
    def write_plain(image: Path, text: str | None) -> None:
        """Write (or, for ``None``, remove) a caption file without keeping the old text."""
        path = caption_path(image)
        if text is None:  # an empty caption file is an error for the trainer; no file = the class tokens
            path.unlink(missing_ok=True)
        else:
            atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))

    @_locked
    def save(self, image: Path, text: str, base: str | None = None, batch: str | None = None) -> Saved:
        """Write ``text`` (``""`` removes the caption file). ``base`` is the version the editor started
        from: when the file changed since, this save still wins and the reply says so."""
        if not isinstance(text, str) or len(text) > MAX_CAPTION:
            raise ValueError(f"caption: expected text of at most {MAX_CAPTION} characters.")
        if not image.is_file():
            raise FileNotFoundError(f"{self.ws.rel(image)}: no such image (deleted in another tab?).")
        # one line per caption (several only with wildcards); no trailing spaces, no blank ends
        new = "\n".join(line.strip() for line in text.replace("\r\n", "\n").split("\n")).strip() or None
        current = read(image)
        conflict = base is not None and base != version(current)
        if current == new:
            return Saved(new, version(new), conflict, "unchanged")
        self._push(image, current, batch)
        self.write_plain(image, new)
        message = "saved" if new is not None else "caption removed: the image trains with its folder's class tokens"
        if conflict:
            message = ("saved over a newer text written elsewhere (another tab or tool) since this page loaded; "
                       "that text is kept: Undo brings it back")
        return Saved(new, version(new), conflict, message)

    @_locked
    def undo(self, image: Path) -> Saved:
        """Put back the text the last write replaced."""
        stack = self.history(image)
        if not stack:
            raise LookupError(f"{self.ws.rel(image)}: nothing to undo.")
        entry = stack.pop()
        self.write_plain(image, entry["text"])
        atomic_write(self._history_file(image), lambda tmp: Path(tmp).write_text(json.dumps(stack)))
        return Saved(entry["text"], version(entry["text"]), False, "undone")

    # -- bulk changes --------------------------------------------------------------------------------
    def apply(self, changes: list[tuple[Path, str | None]], what: str) -> dict:
        """Write many captions as one undoable batch; returns the batch record."""
        batch = f"{time.time_ns()}"
        try:
            for image, text in changes:
                self.replace(image, text, batch)
        finally:  # a batch cut short is still undoable as far as it went
            record = self.record(batch, what, [image for image, _ in changes])
        return record

    @_locked
    def replace(self, image: Path, text: str | None, batch: str) -> bool:
        """Write ``text`` as part of ``batch`` (the old text goes on the undo stack); False when unchanged."""
        current = read(image)
        if current == text:
            return False
        self._push(image, current, batch)
        self.write_plain(image, text)
        return True

    @_locked
    def record(self, batch: str, what: str, images: list[Path]) -> dict:
        """Register ``batch`` (its files) for "undo this change" (the last 20 are kept)."""
        record = {"id": batch, "time": time.time(), "what": what, "files": [self.ws.rel(i) for i in images]}
        batches = [r for r in self.batches() if r["id"] != batch]
        write_json(self.root / "batches.json", {"batches": (batches + [record])[-20:]})
        return record

    def batches(self) -> list[dict]:
        try:
            return json.loads((self.root / "batches.json").read_text())["batches"]
        except (OSError, ValueError, KeyError):
            return []

    @_locked
    def undo_batch(self, batch: str) -> int:
        """Undo every caption of ``batch`` whose latest change is still that batch's; returns how many."""
        records = self.batches()
        record = next((r for r in records if r["id"] == batch), None)
        if record is None:
            raise LookupError(f"bulk change {batch!r}: not found (only the last 20 are kept).")
        undone = 0
        for rel in record["files"]:
            image = self.ws.resolve(rel)
            stack = self.history(image)
            if stack and stack[-1].get("batch") == batch:
                self.undo(image)
                undone += 1
        write_json(self.root / "batches.json", {"batches": [r for r in records if r["id"] != batch]})
        return undone
