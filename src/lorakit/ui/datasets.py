"""Datasets in kohya's folder layout: ``datasets/<name>/img/<N_name>/`` (N repeats per epoch, name = the
class tokens of images without a caption) and ``datasets/<name>/reg/<N_name>/`` for regularisation.

Listing reads only directory entries (one ``scandir`` per folder) and the captions of the page shown,
so a 5,000-image dataset pages as fast as a small one. Deleting moves the image and its caption into
``trash/`` (restorable); nothing else removes a file from a dataset.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..tasks.diffusion.dataset.layout import parse_folder_name
from ..tasks.diffusion.dataset.scan import IMAGE_EXTENSIONS
from . import captions
from .workspace import PathError, Workspace, check_name

KINDS = ("img", "reg")
PER_PAGE = 60


@dataclass
class Folder:
    kind: str
    name: str
    repeats: int | None
    tokens: str | None
    path: Path
    count: int

    @property
    def rel(self) -> str:
        return f"{self.kind}/{self.name}"


def list_images(folder: Path) -> list[str]:
    """Image file names of one folder, sorted (hidden files skipped, as the trainer skips them)."""
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return []
    with entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file()
                      and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)


class Datasets:
    def __init__(self, ws: Workspace):
        self.ws = ws

    def path(self, name: str) -> Path:
        check_name(name, "dataset")
        path = self.ws.resolve(f"datasets/{name}")
        if not path.is_dir():
            raise FileNotFoundError(f"dataset {name!r}: not found in {self.ws.rel(self.ws.datasets)}/.")
        return path

    def names(self) -> list[str]:
        return sorted(p.name for p in self.ws.datasets.iterdir() if p.is_dir() and not p.name.startswith("."))

    def folders(self, name: str) -> list[Folder]:
        root, out = self.path(name), []
        for kind in KINDS:
            base = root / kind
            if not base.is_dir():
                continue
            for sub in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
                parsed = parse_folder_name(sub.name)
                out.append(Folder(kind, sub.name, parsed[0] if parsed else None, parsed[1] if parsed else None, sub,
                                  len(list_images(sub))))
        return out

    def folder(self, name: str, rel: str) -> Folder:
        found = next((f for f in self.folders(name) if f.rel == rel), None)
        if found is None:
            raise FileNotFoundError(f"dataset {name!r} has no folder {rel!r}; its folders: "
                                    f"{', '.join(f.rel for f in self.folders(name)) or 'none'}.")
        return found

    def summary(self, name: str) -> dict:
        folders = self.folders(name)
        return {"name": name, "images": sum(f.count for f in folders if f.kind == "img"),
                "reg_images": sum(f.count for f in folders if f.kind == "reg"),
                "folders": [{"rel": f.rel, "kind": f.kind, "repeats": f.repeats, "tokens": f.tokens, "count": f.count}
                            for f in folders]}

    # -- creating ------------------------------------------------------------------------------------
    def create(self, name: str, repeats: int, tokens: str) -> Path:
        check_name(name, "dataset")
        root = self.ws.resolve(f"datasets/{name}")
        if root.exists():
            raise FileExistsError(f"dataset {name!r} already exists; choose another name.")
        self.add_folder_to(root, "img", repeats, tokens)
        (root / "reg").mkdir()
        return root

    def add_folder(self, name: str, kind: str, repeats: int, tokens: str) -> Path:
        return self.add_folder_to(self.path(name), kind, repeats, tokens)

    def add_folder_to(self, root: Path, kind: str, repeats: int, tokens: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"folder kind {kind!r}: expected 'img' (training images) or 'reg' (regularisation).")
        folder = self.ws.inside(root / kind, folder_name(repeats, tokens))
        if folder.exists():
            raise FileExistsError(f"{self.ws.rel(folder)} already exists.")
        folder.mkdir(parents=True)
        return folder

    def rename_folder(self, name: str, rel: str, repeats: int, tokens: str) -> Path:
        """Change a folder's repeats or class tokens (kohya reads both from its name)."""
        old = self.folder(name, rel)
        new = self.ws.inside(old.path.parent, folder_name(repeats, tokens))
        if new.exists():
            raise FileExistsError(f"{self.ws.rel(new)} already exists.")
        old.path.rename(new)
        return new

    # -- images --------------------------------------------------------------------------------------
    def image(self, name: str, rel: str) -> Path:
        """An image of the dataset by its path inside the dataset (``img/10_x/a.png``)."""
        root = self.path(name)
        path = self.ws.resolve(f"datasets/{name}/{rel}", must_exist=True)
        if path.parent.parent.parent != root or path.parent.parent.name not in KINDS \
                or path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            raise PathError(f"{rel!r} is not an image of dataset {name!r} (expected img/<folder>/<image>).")
        return path

    def page(self, name: str, rel: str | None = None, page: int = 1, per_page: int = PER_PAGE) -> dict:
        """One page of images (all folders in order, or one folder) with their captions."""
        folders = [self.folder(name, rel)] if rel else self.folders(name)
        files = [(f, n) for f in folders for n in list_images(f.path)]
        per_page = max(1, min(int(per_page), 500))
        pages = max(1, -(-len(files) // per_page))
        page = min(max(1, int(page)), pages)
        items = []
        for f, n in files[(page - 1) * per_page: page * per_page]:
            image = f.path / n
            text = captions.read(image)
            items.append({"rel": f"{f.rel}/{n}", "name": n, "folder": f.rel, "caption": text or "",
                          "has_caption": text is not None, "version": captions.version(text),
                          "fallback": f.tokens or "", "mtime": int(image.stat().st_mtime_ns)})
        return {"items": items, "total": len(files), "page": page, "pages": pages, "per_page": per_page}

    def all_images(self, name: str) -> list[Path]:
        return [f.path / n for f in self.folders(name) for n in list_images(f.path)]

    # -- trash ---------------------------------------------------------------------------------------
    def trash(self, name: str, rel: str) -> str:
        """Move the image and its caption files to ``trash/<time>/<dataset>/<rel>``; returns the trash entry."""
        image = self.image(name, rel)
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"
        target = self.ws.trash / stamp / name / rel
        target.parent.mkdir(parents=True)
        for path in [image, *(image.with_suffix(e) for e in (".txt", ".caption"))]:
            if path.is_file():
                shutil.move(str(path), target.parent / path.name)
        return f"{stamp}/{name}/{rel}"

    def trashed(self) -> list[dict]:
        out = []
        for stamp in sorted((p for p in self.ws.trash.iterdir() if p.is_dir()), reverse=True):
            for image in sorted(stamp.rglob("*")):
                if image.is_file() and image.suffix.lower() in IMAGE_EXTENSIONS:
                    parts = image.relative_to(stamp).parts
                    out.append({"entry": image.relative_to(self.ws.trash).as_posix(), "dataset": parts[0],
                                "rel": "/".join(parts[1:]), "time": stamp.name})
        return out

    def restore(self, entry: str) -> str:
        """Put a trashed image (and its captions) back where it was; refuses to overwrite."""
        image = self.ws.resolve(f"trash/{entry}", must_exist=True)
        stamp = self.ws.trash / Path(entry).parts[0]
        dataset, *rest = image.relative_to(stamp).parts
        back = self.ws.resolve(f"datasets/{dataset}/{'/'.join(rest)}")
        files = [p for p in [image, *(image.with_suffix(e) for e in (".txt", ".caption"))] if p.is_file()]
        clash = [p.name for p in files if (back.parent / p.name).exists()]
        if clash:
            raise FileExistsError(f"cannot restore: {', '.join(clash)} already exist in datasets/{dataset}/"
                                  f"{'/'.join(rest[:-1])}; rename or remove them first.")
        back.parent.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.move(str(path), back.parent / path.name)
        for parent in image.parents:  # prune emptied trash folders
            if parent == self.ws.trash or any(parent.iterdir()):
                break
            parent.rmdir()
        return f"{dataset}/{'/'.join(rest)}"


def folder_name(repeats, tokens: str) -> str:
    """kohya's ``N_name`` for a folder: ``repeats`` >= 1 and class tokens (the caption of images without one)."""
    if not isinstance(repeats, int) or isinstance(repeats, bool) or not 1 <= repeats <= 10_000:
        raise ValueError(f"repeats={repeats!r}: expected an integer from 1 to 10000 (kohya's N in N_name).")
    tokens = (tokens or "").strip()
    return check_name(f"{repeats}_{tokens}", "folder")
