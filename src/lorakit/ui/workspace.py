"""The UI's workspace: one directory holding everything the UI reads and writes.

    WORKSPACE/
      datasets/<name>/img/<N_name>/     kohya's layout: N repeats, name = class tokens; captions beside images
      datasets/<name>/reg/<N_name>/     regularisation folders (optional)
      configs/<name>.yaml               training configs (the form and the YAML editor edit these)
      runs/<run>/                       one training each (train.output_dir): launch.yaml, train.log, ...
      models/                           base and captioning models (optional: configs may point anywhere)
      loras/                            LoRA files for the generate page (runs/ are searched too)
      outputs/                          generated images (PNG with A1111 infotext)
      trash/<time>/<dataset>/...        deleted images with their captions (restorable)
      .lorakit/                         job database, thumbnails, caption history, logs of other jobs

Every path a client names goes through :meth:`Workspace.resolve`: relative, no ``..``, and still inside
the workspace once symlinks are resolved. Config paths are relative to the workspace, as they are for
``lorakit train`` run from it (jobs start there).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

from ..formats._io import atomic_write

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,99}$")
FOLDERS = ("datasets", "configs", "runs", "models", "loras", "outputs", "trash", ".lorakit")
_CWD_LOCK = threading.RLock()


class PathError(ValueError):
    """A client named a path outside the workspace, or a name that is not allowed."""


def check_name(name: str, what: str) -> str:
    """A dataset, config, run or folder name: letters, digits, space and ``_.()+-``, not starting with a dot."""
    if not isinstance(name, str) or not NAME.match(name) or name.strip() != name or ".." in name:
        raise PathError(f"{what} name {name!r}: expected 1-100 letters, digits, spaces or _.()+- (not starting "
                        "with a dot or space, no '..'), e.g. 'my-dataset'.")
    return name


class Workspace:
    """The workspace at ``root`` (created with its folders when missing)."""

    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(f"workspace {root} is a file; give a directory (it is created when missing).")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        for name in FOLDERS:
            (self.root / name).mkdir(exist_ok=True)
        self.state = self.root / ".lorakit"
        for name in ("thumbs", "history", "jobs"):
            (self.state / name).mkdir(exist_ok=True)

    def __getattr__(self, name: str) -> Path:  # ws.datasets, ws.configs, ws.runs ... are the folders
        if name in FOLDERS:
            return self.root / name
        raise AttributeError(name)

    def resolve(self, rel: str | os.PathLike, *, must_exist: bool = False) -> Path:
        """``rel`` inside the workspace; refuses absolute paths, ``..``, NUL and symlinks that lead out."""
        text = str(rel)
        if "\x00" in text or "\\" in text:
            raise PathError(f"path {text!r}: NUL and backslashes are not allowed; use '/' between folders.")
        path = Path(text)
        if path.is_absolute() or re.match(r"^[A-Za-z]:", text):
            raise PathError(f"path {text!r}: expected a path relative to the workspace, not an absolute one.")
        if ".." in path.parts:
            raise PathError(f"path {text!r}: '..' is not allowed; name a path inside the workspace.")
        full = (self.root / path).resolve()
        if full != self.root and not full.is_relative_to(self.root):
            raise PathError(f"path {text!r} leads outside the workspace (through a symlink); refused.")
        if must_exist and not full.exists():
            raise FileNotFoundError(f"{text}: not found in the workspace.")
        return full

    def rel(self, path: str | Path) -> str:
        """``path`` relative to the workspace root (as configs and clients name it)."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def inside(self, folder: Path, name: str) -> Path:
        """``folder/name`` for a plain file name (no separators), checked to stay inside ``folder``."""
        if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
            raise PathError(f"file name {name!r}: expected a plain name without folders.")
        path = (folder / name).resolve()
        if path.parent != folder.resolve():
            raise PathError(f"file name {name!r} leads outside {self.rel(folder)}; refused.")
        return path

    @contextlib.contextmanager
    def cwd(self):
        """Run library code that reads config paths from the working directory (``lorakit validate``'s
        functions) as if started in the workspace. Process-wide, so serialised; the UI's own code only
        uses absolute paths."""
        with _CWD_LOCK:
            old = os.getcwd()
            os.chdir(self.root)
            try:
                yield self.root
            finally:
                os.chdir(old)

    def write_text(self, path: Path, text: str) -> None:
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
