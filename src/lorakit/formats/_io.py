"""Safe, atomic file I/O shared by every format: safetensors only by default, no partial files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_HEADER = 100 * 1024 * 1024  # a larger header is corrupt or hostile


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, data: dict) -> None:
    def _write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
    atomic_write(path, _write)


def write_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_safetensors(path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata. Pickle files are refused unless ``allow_pickle`` (then weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ValueError(
                f"{path} is a pickle file ({path.suffix}); lorakit does not unpickle files by default because "
                "unpickling can run arbitrary code. Convert it once, in a sandbox if you do not trust it: "
                f"python -c \"import torch; from safetensors.torch import save_file; "
                f"save_file(torch.load('{path.name}', weights_only=True), '{path.stem}.safetensors')\" "
                "(weights_only=True refuses code objects), or pass allow_pickle=True if you trust its source.")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, {}
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"{path} is not a safetensors file: it has {size} bytes, fewer than the 8-byte header length.")
    header_len = int.from_bytes(head, "little")
    if header_len > MAX_HEADER:
        raise ValueError(f"{path} is corrupt or not a safetensors file: its header claims {header_len} bytes, more "
                         f"than the {MAX_HEADER}-byte limit lorakit accepts (real LoRA headers are a few MB at most).")
    if header_len + 8 > size:
        raise ValueError(f"{path} is truncated or corrupt: its header claims {header_len} bytes but the file has "
                         f"{size} bytes. Re-download or re-export the file.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, Exception) as exc:
        raise ValueError(f"{path} could not be read as safetensors ({exc}). The file may be truncated or not a "
                         "safetensors file.") from exc
    return tensors, metadata
