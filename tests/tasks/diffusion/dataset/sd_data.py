"""Tiny image folders for the SD dataset tests (PNG/JPEG files written with Pillow)."""

import hashlib
from pathlib import Path

from PIL import Image


def image(path: Path, w: int, h: int, color=(200, 30, 60)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color).save(path)
    return path


def folder(root: Path, name: str, sizes, captions=None, ext=".txt") -> Path:
    """``root/name`` with one image per size; ``captions[i]`` (when not None) written next to image i."""
    d = root / name
    for i, (w, h) in enumerate(sizes):
        image(d / f"img{i:02d}.png", w, h, (i * 37 % 256, 90, 200))
        if captions is not None and captions[i] is not None:
            (d / f"img{i:02d}{ext}").write_text(captions[i], encoding="utf-8")
    return d


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the sha256 of its bytes (to prove nothing was written or deleted)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


class CountingEncoder:
    """A stand-in VAE: the mean over 8x8 pixel blocks (4 channels), recording every call's batch size."""

    def __init__(self, events: list | None = None):
        self.calls: list[int] = []
        self.events = events  # a shared log of calls (and of whatever else a test appends)

    def __call__(self, pixels):
        self.calls.append(pixels.shape[0])
        if self.events is not None:
            self.events.append(pixels.shape[0])
        b, _, h, w = pixels.shape
        x = pixels.reshape(b, 3, h // 8, 8, w // 8, 8).mean((3, 5))
        return x.repeat(1, 2, 1, 1)[:, :4]

    @property
    def images(self) -> int:
        return sum(self.calls)
