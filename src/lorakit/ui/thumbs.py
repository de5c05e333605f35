"""Thumbnails, cached in ``.lorakit/thumbs/`` under a key of the image's path, size and modification time
(a changed image gets a new thumbnail; the old one is never shown). Made on first request."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image, ImageOps

from ..formats._io import atomic_write
from .workspace import Workspace

SIDE = 256


class Thumbnails:
    def __init__(self, ws: Workspace, side: int = SIDE):
        self.ws, self.side = ws, side
        self.root = ws.state / "thumbs"

    def path_for(self, image: Path) -> Path:
        st = image.stat()
        key = hashlib.sha1(f"{image}|{st.st_size}|{st.st_mtime_ns}|{self.side}".encode()).hexdigest()
        return self.root / key[:2] / f"{key}.webp"

    def get(self, image: Path) -> Path:
        """The cached thumbnail of ``image`` (made now if missing); raises ``ValueError`` for an unreadable image."""
        thumb = self.path_for(image)
        if thumb.is_file():
            return thumb
        try:
            with Image.open(image) as img:
                img = ImageOps.exif_transpose(img)
                img.thumbnail((self.side, self.side), Image.Resampling.LANCZOS)
                img = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{self.ws.rel(image)}: unreadable or corrupt image ({exc}).") from exc
        atomic_write(thumb, lambda tmp: img.save(tmp, format="WEBP", quality=85))
        return thumb
