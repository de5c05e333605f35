"""Uploads into a dataset folder: images and their caption files, one by one or in a ZIP.

Each file is checked before it is written, and every refused one is listed with its reason: not an
image, truncated or corrupt, too small, too large, a name already taken, a ZIP entry that would land
outside its folder (``..``, absolute paths, symlinks). Folders inside a ZIP are flattened (kohya reads
only the files directly in an ``N_name`` folder). Files are written atomically and never over an
existing file.
"""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from ..formats._io import atomic_write
from ..tasks.diffusion.dataset.scan import IMAGE_EXTENSIONS
from .workspace import PathError, Workspace

CAPTION_EXTENSIONS = (".txt", ".caption")


@dataclass
class Limits:
    """Caps on what one upload may bring."""

    max_file_bytes: int = 50 << 20
    max_files: int = 10_000
    max_total_bytes: int = 4 << 30
    """Uncompressed bytes of one upload (a ZIP's entries included)."""
    min_side: int = 16
    max_pixels: int = 8192 * 8192


@dataclass
class Report:
    accepted: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    total: int = 0

    def refuse(self, name: str, reason: str) -> None:
        self.rejected.append({"name": name, "reason": reason})


def image_problem(data: bytes, limits: Limits) -> str | None:
    """Why ``data`` cannot be a training image (``None``: it can)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > limits.max_pixels:
                return f"too large ({w}x{h} = {w * h:,} pixels; the cap is {limits.max_pixels:,})"
            img.load()  # decodes everything: a truncated file fails here
    except Image.DecompressionBombError:
        return f"too large (over Pillow's decompression-bomb limit; the cap is {limits.max_pixels:,} pixels)"
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        if "cannot identify image file" in text:
            return "not an image (its contents are not a picture Pillow can read)"
        return f"truncated or corrupt ({text[:120]})"
    if min(w, h) < limits.min_side:
        return f"too small ({w}x{h}; each side must be at least {limits.min_side} px)"
    return None


class Uploader:
    """Checks and writes the files of one upload into ``folder``."""

    def __init__(self, ws: Workspace, folder: Path, limits: Limits | None = None):
        self.ws, self.folder, self.limits = ws, folder, limits or Limits()
        self.report = Report()
        self.seen: set[str] = set()
        self.bytes = 0
        self.captions: list[tuple[str, bytes]] = []

    def add(self, name: str, data: bytes | None, size: int | None = None) -> None:
        """One file; ``data`` None with ``size`` over the cap is refused without reading it."""
        base = PurePosixPath(name.replace("\\", "/")).name
        ext = Path(base).suffix.lower()
        self.report.total += 1
        if self.report.total > self.limits.max_files:
            return self.report.refuse(name, f"over the cap of {self.limits.max_files} files per upload")
        if ext not in IMAGE_EXTENSIONS + CAPTION_EXTENSIONS:
            return self.report.refuse(name, f"not an image (extension {ext or 'none'!r}; expected "
                                            f"{', '.join(IMAGE_EXTENSIONS)} or a {'/'.join(CAPTION_EXTENSIONS)} caption)")
        size = len(data) if data is not None else size or 0
        if size > self.limits.max_file_bytes:
            return self.report.refuse(name, f"too large ({size:,} bytes; the cap is {self.limits.max_file_bytes:,})")
        if self.bytes + size > self.limits.max_total_bytes:
            return self.report.refuse(name, f"over the cap of {self.limits.max_total_bytes:,} bytes per upload")
        self.bytes += size
        try:
            target = self.ws.inside(self.folder, base)
        except PathError as exc:
            return self.report.refuse(name, str(exc))
        if base.lower() in self.seen:
            return self.report.refuse(name, "the same name twice in this upload (folders inside a ZIP are flattened)")
        if ext in CAPTION_EXTENSIONS:
            return self.captions.append((name, data))
        if target.exists():
            return self.report.refuse(name, f"a file named {base!r} is already in this folder; rename it or delete "
                                            "the old one first")
        problem = image_problem(data, self.limits)
        if problem:
            return self.report.refuse(name, problem)
        self.seen.add(base.lower())
        atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
        self.report.accepted.append(base)

    def finish(self) -> Report:
        """Write the caption files whose image is in the folder (uploaded now or before)."""
        for name, data in self.captions:
            base = PurePosixPath(name.replace("\\", "/")).name
            target = self.ws.inside(self.folder, base)
            images = [target.with_suffix(e) for e in IMAGE_EXTENSIONS] + [target.with_suffix(e.upper())
                                                                          for e in IMAGE_EXTENSIONS]
            if not any(p.is_file() for p in images):
                self.report.refuse(name, "caption without an image of the same name in this folder")
            elif target.exists():
                self.report.refuse(name, f"a caption {base!r} is already there; edit it on the dataset page")
            else:
                try:
                    text = data.decode("utf-8-sig")
                except UnicodeDecodeError:
                    self.report.refuse(name, "caption is not UTF-8 text; re-save it as UTF-8")
                    continue
                atomic_write(target, lambda tmp, t=text: Path(tmp).write_text(t, encoding="utf-8"))
                self.report.accepted.append(base)
        self.captions = []
        return self.report

    def add_zip(self, path: Path, label: str) -> None:
        """Every entry of a ZIP file; entries that would land outside the folder are refused by name."""
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            return self.report.refuse(label, f"not a readable ZIP file ({exc})")
        with archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                name = info.filename
                problem = zip_entry_problem(info)
                if problem:
                    self.report.total += 1
                    self.report.refuse(f"{label}: {name}", problem)
                    continue
                if info.file_size > self.limits.max_file_bytes:
                    self.add(f"{label}: {name}", None, info.file_size)
                    continue
                try:  # read one byte past the cap: a header that lies about the size is caught too
                    with archive.open(info) as f:
                        data = f.read(self.limits.max_file_bytes + 1)
                except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
                    self.report.total += 1
                    self.report.refuse(f"{label}: {name}", f"damaged ZIP entry ({exc})")
                    continue
                self._add_entry(name, label, data)

    def _add_entry(self, name: str, label: str, data: bytes) -> None:
        before = len(self.report.rejected)
        self.add(name, data)
        for item in self.report.rejected[before:]:
            item["name"] = f"{label}: {item['name']}"


def zip_entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a ZIP entry is refused before reading it: a path that leaves its folder, or a symlink."""
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts or "\x00" in name:
        return "would land outside its folder (absolute path or '..' in the name); refused"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link; refused (links could point outside the workspace)"
    return None
