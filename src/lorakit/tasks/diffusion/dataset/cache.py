"""Latent and text-encoder output caches, in RAM or on disk, keyed by content.

A latent entry's key hashes the image file's bytes, its size, bucket, resized size, crop (centre), the
resize filter, and the VAE key the task supplies; a changed image or VAE gives a new key, so a stale
entry is never read. The entry holds the latents and, with ``flip_aug``, the latents of the mirrored
pixels. Text entries hash the caption and the text-encoder key. Disk entries are safetensors files
written atomically under the cache directory (never in a dataset folder), shared by later runs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from ....formats._io import write_safetensors
from .images import load_pixels
from .scan import ImageItem

ENCODE_BATCH = 8  # images per encoder call while filling the cache
FORMAT = "lorakit-sd-cache-1"  # bump when an entry's layout changes: old entries are then never matched


def default_cache_dir() -> Path:
    root = os.environ.get("LORAKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                           os.path.expanduser("~/.cache"), "lorakit")
    return Path(root) / "sd"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _key(*parts) -> str:
    return hashlib.sha256("\0".join(str(p) for p in (FORMAT,) + parts).encode()).hexdigest()


class _Store:
    """RAM dict of entries, optionally backed by ``<dir>/<kind>/<key[:2]>/<key>.safetensors``."""

    def __init__(self, kind: str, directory: Path | None, keep_in_ram: bool = True):
        self.dir = directory / kind if directory is not None else None
        self.keep_in_ram = keep_in_ram or directory is None
        self.ram: dict[str, dict[str, torch.Tensor]] = {}

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return key in self.ram or (self.dir is not None and self.path(key).is_file())

    def get(self, key: str) -> dict[str, torch.Tensor]:
        if key in self.ram:
            return self.ram[key]
        try:
            entry = load_file(str(self.path(key)))
        except Exception as exc:  # a damaged entry is reported, never trained on
            raise RuntimeError(f"cache entry {self.path(key)} is unreadable ({exc}); delete it to re-encode.") from exc
        if self.keep_in_ram:
            self.ram[key] = entry
        return entry

    def load(self, key: str) -> bool:
        """Bring a disk entry into RAM (when RAM is kept); False when it is unreadable (then re-encode)."""
        try:
            self.get(key)
            return True
        except RuntimeError:
            return False

    def put(self, key: str, entry: dict[str, torch.Tensor]) -> None:
        entry = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in entry.items()}
        if self.dir is not None:
            write_safetensors(self.path(key), entry)
        if self.keep_in_ram:
            self.ram[key] = entry


class LatentCache:
    """Latents per image (and per mirrored image with flip_aug), filled by ``fill``."""

    def __init__(self, vae_key: str, directory: Path | None, keep_in_ram: bool = True):
        self.vae_key = vae_key
        self.store = _Store("latents", directory, keep_in_ram)
        self.keys: dict[int, str] = {}
        self.encoded = 0
        """Images encoded by the last ``fill`` (the rest came from the cache)."""

    def key(self, item: ImageItem, digest: str) -> str:
        return _key("latents", digest, item.size, item.bucket, item.resized, "centre",
                    item.subset.resize_interpolation, bool(item.subset.flip_aug), self.vae_key)

    def fill(self, items: list[ImageItem], encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Encode the images that have no entry yet, a bucket's images per call (mirrors in the same call)."""
        todo: dict[tuple[int, int], list[tuple[int, str]]] = {}
        for index, item in enumerate(items):
            key = self.key(item, file_digest(item.path))
            self.keys[index] = key
            if self.store.has(key) and (not self.store.keep_in_ram or self.store.load(key)):
                continue
            todo.setdefault(item.bucket, []).append((index, key))
        self.encoded = 0
        for group in todo.values():
            for lo in range(0, len(group), ENCODE_BATCH):
                chunk = group[lo:lo + ENCODE_BATCH]
                flip = [items[i].subset.flip_aug for i, _ in chunk]
                pixels = [load_pixels(items[i]) for i, _ in chunk]
                mirrored = [p.flip(-1) for p, f in zip(pixels, flip, strict=True) if f]
                with torch.no_grad():
                    latents = encode(torch.stack(pixels + mirrored))
                k = len(chunk)
                flipped = iter(latents[k:])
                for (_, key), lat, f in zip(chunk, latents[:k], flip, strict=True):
                    entry = {"latents": lat}
                    if f:
                        entry["latents_flipped"] = next(flipped)
                    self.store.put(key, entry)
                self.encoded += k

    def get(self, index: int, flipped: bool) -> torch.Tensor:
        entry = self.store.get(self.keys[index])
        return entry["latents_flipped" if flipped else "latents"]


class TextCache:
    """Text-encoder outputs per distinct caption."""

    def __init__(self, text_key: str, directory: Path | None, keep_in_ram: bool = True):
        self.text_key = text_key
        self.store = _Store("text", directory, keep_in_ram)
        self.encoded = 0

    def key(self, caption: str) -> str:
        return _key("text", self.text_key, caption)

    def fill(self, captions: list[str], encode: Callable[[list[str]], dict[str, torch.Tensor]]) -> None:
        todo = sorted({c for c in captions if not (self.store.has(self.key(c)) and self.store.load(self.key(c)))})
        self.encoded = len(todo)
        for lo in range(0, len(todo), ENCODE_BATCH):
            chunk = todo[lo:lo + ENCODE_BATCH]
            with torch.no_grad():
                out = encode(chunk)
            for i, caption in enumerate(chunk):
                self.store.put(self.key(caption), {name: t[i] for name, t in out.items()})

    def get(self, caption: str) -> dict[str, torch.Tensor]:
        return self.store.get(self.key(caption))
