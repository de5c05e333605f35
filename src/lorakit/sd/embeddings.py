"""Textual-inversion embeddings (EasyNegative, badhandv4, ...) named in prompts by their file stem.

Files: A1111 ``.pt``/``.bin`` (``string_to_param: {'*': [n, dim]}``), kohya ``.safetensors``
(``emb_params``) and SDXL ``.safetensors`` (``clip_l`` / ``clip_g``, one per text encoder). ``.pt``
files are pickles: they are read only with ``torch.load(weights_only=True)``, which runs no code;
a pickle that needs code is refused, with safe ways out only (a .safetensors release of it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

SUFFIXES = (".safetensors", ".pt", ".bin")
SDXL_KEYS = ("clip_l", "clip_g")


@dataclass
class Embedding:
    """One file: ``vectors[i]`` is [n_vec, dim] for text encoder i (one entry unless SDXL)."""

    name: str
    path: Path
    vectors: list[torch.Tensor]

    @property
    def shorthash(self) -> str:
        """A1111's TI hash: the first 12 hex digits of the file's sha256."""
        return file_sha256(self.path)[:12]


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_embedding(path) -> Embedding:
    """Read one embedding file (see the module docstring for the formats)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from ..formats._io import read_safetensors

        data = read_safetensors(path)[0]  # a file that is not safetensors is named as such, its bytes not echoed
    elif path.suffix in (".pt", ".bin"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  (any refusal by the safe unpickler)
            raise ValueError(f"{path}: refused to load: it needs code execution to unpickle ({type(e).__name__}), "
                             "which lorakit will not run. Use a .safetensors release of this embedding instead (most "
                             "are published as .safetensors), or train it again.") from None
    else:
        raise ValueError(f"{path}: expected an embedding file ending in {SUFFIXES}.")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of tensors; got {type(data).__name__}.")
    if all(k in data for k in SDXL_KEYS):
        vectors = [data["clip_l"], data["clip_g"]]
    elif "string_to_param" in data:
        vectors = [next(iter(data["string_to_param"].values()))]
    elif "emb_params" in data:
        vectors = [data["emb_params"]]
    elif len(data) == 1 and isinstance(next(iter(data.values())), torch.Tensor):  # diffusers: {token: vec}
        vectors = [next(iter(data.values()))]
    else:
        raise ValueError(f"{path}: not a textual-inversion file; keys {sorted(data)[:8]} have none of "
                         "'string_to_param' (A1111), 'emb_params' (kohya), 'clip_l'+'clip_g' (SDXL).")
    vectors = [v.detach().float().reshape(-1, v.shape[-1]) for v in vectors]
    return Embedding(path.stem, path, vectors)


class EmbeddingDB:
    """Embeddings of a directory (recursive), loaded on first use; token = file stem."""

    def __init__(self, directory=None, files=()):
        self.paths: dict[str, Path] = {}
        if directory is not None:
            directory = Path(directory)
            if not directory.is_dir():
                raise ValueError(f"embeddings directory {directory} does not exist.")
            for p in sorted(directory.rglob("*")):
                if p.suffix in SUFFIXES and p.is_file():
                    self.paths.setdefault(p.stem, p)
        for p in files:
            self.paths[Path(p).stem] = Path(p)
        self.loaded: dict[str, Embedding] = {}
        self.used: dict[str, Embedding] = {}

    def get(self, name: str) -> Embedding:
        if name not in self.loaded:
            self.loaded[name] = load_embedding(self.paths[name])
        return self.loaded[name]

    def for_encoder(self, tokenizer, index: int, dim: int, n_encoders: int = 1) -> EncoderView:
        return EncoderView(self, tokenizer, index, dim, n_encoders)


class EncoderView:
    """Finds embedding names in one tokenizer's ids (longest match first, as A1111)."""

    def __init__(self, db: EmbeddingDB, tokenizer, index: int, dim: int, n_encoders: int = 1):
        self.db, self.index, self.dim, self.n_encoders = db, index, dim, n_encoders
        self.ids: dict[int, list[tuple[list[int], str]]] = {}
        for name in db.paths:
            ids = tokenizer(name, add_special_tokens=False)["input_ids"]
            if ids:
                self.ids.setdefault(ids[0], []).append((ids, name))
        for cands in self.ids.values():
            cands.sort(key=lambda c: -len(c[0]))

    def find_at(self, tokens: list[int], pos: int):
        """(vectors [n, dim], tokens used) for an embedding name starting at ``pos``, or None."""
        for ids, name in self.ids.get(tokens[pos], []):
            if tokens[pos:pos + len(ids)] == ids:
                emb = self.db.get(name)
                if len(emb.vectors) != self.n_encoders:
                    raise ValueError(f"embedding {name} ({emb.path}) has {len(emb.vectors)} vector set(s) but this "
                                     f"model has {self.n_encoders} text encoder(s): SDXL embeddings (clip_l + "
                                     "clip_g) work only on SDXL, SD1/SD2 ones only on SD1/SD2.")
                vec = emb.vectors[self.index]
                if vec.shape[-1] != self.dim:
                    raise ValueError(f"embedding {name} ({emb.path}) has {vec.shape[-1]}-wide vectors but text "
                                     f"encoder {self.index + 1} is {self.dim} wide: it was made for another model "
                                     "family.")
                self.db.used[name] = emb
                return vec, len(ids)
        return None
