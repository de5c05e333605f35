"""Safe, atomic file I/O shared by every format: safetensors only by default, no partial files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import LoraFileError

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
    """Write ``tensors`` atomically; tensors sharing storage (e.g. one ``lora_down`` copied to the q, k and v
    parts of a split module) are written as separate copies, as the format requires."""
    seen: set[tuple] = set()
    out = {}
    for k, v in tensors.items():
        v = v.detach().contiguous()
        where = (v.untyped_storage().data_ptr(), v.storage_offset(), v.nbytes) if v.numel() else None
        out[k] = v.clone() if where in seen else v
        seen.add(where)
    tensors = out
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_safetensors(path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata. Pickle files are refused unless ``allow_pickle`` (then weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise LoraFileError(path,
                f"a pickle file ({path.suffix}); lorakit does not unpickle files by default because "
                "unpickling can run arbitrary code. Convert it once, in a sandbox if you do not trust it: "
                f"python -c \"import torch; from safetensors.torch import save_file; "
                f"save_file(torch.load('{path.name}', weights_only=True), '{path.stem}.safetensors')\" "
                "(weights_only=True refuses code objects), or pass allow_pickle=True if you trust its source.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or hostile pickle
            raise LoraFileError(path, f"could not be read as a weights-only pickle ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        if not isinstance(state, dict):
            raise LoraFileError(path, f"found a pickled {type(state).__name__}; expected a dict of tensors")
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, {}
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise LoraFileError(path, f"not a safetensors file: it has {size} bytes, fewer than the 8-byte header length.")
    header_len = int.from_bytes(head, "little")
    if header_len > MAX_HEADER:
        raise LoraFileError(path, f"corrupt or not a safetensors file: its header claims {header_len} bytes, more "
                         f"than the {MAX_HEADER}-byte limit lorakit accepts (real LoRA headers are a few MB at most).")
    if header_len + 8 > size:
        raise LoraFileError(path, f"truncated or corrupt: its header claims {header_len} bytes but the file has "
                         f"{size} bytes. Re-download or re-export the file.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, Exception) as exc:  # safetensors raises several types for a corrupt header
        raise LoraFileError(path, f"could not be read as safetensors ({exc}). The file may be truncated or not a "
                            "safetensors file.") from exc
    return tensors, metadata


def read_text(path) -> str:
    """A UTF-8 text file; a decoding error names the file, line and byte."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise LoraFileError(path, f"line {line}: byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8 "
                            "text; expected a UTF-8 file. Re-save it as UTF-8.") from exc


def read_json(path):
    """A JSON file; errors name the file, line and column."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoraFileError(path, f"line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}); expected "
                            "a valid JSON document. Fix the file or re-export it.") from exc


def check_output(path, *, kind: str = "file", overwrite: bool = False, inputs=()) -> Path:
    """Refuse an output path before any work: an input, the wrong kind (file vs directory), an existing
    output without ``overwrite``, or a location that cannot be written. Returns the path."""
    path = Path(path)
    fix = "choose another output path"
    if any(path.resolve() == Path(p).resolve() for p in inputs):
        raise ValueError(f"output {path} is one of the inputs; {fix} (inputs are never overwritten).")
    if kind == "file" and path.is_dir():
        raise IsADirectoryError(f"output {path} is an existing directory; expected a file path such as "
                                f"{path / 'out.safetensors'}.")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output {path} is an existing file; expected a directory path. Remove it or {fix}.")
    if path.exists() and not (kind == "dir" and not any(path.iterdir())) and not overwrite:
        raise FileExistsError(f"output {path} already exists; pass --overwrite to replace it, or {fix}.")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"output {path}: {parent} is a file, not a directory; {fix}.")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"output {path}: {parent if not path.exists() else path} is not writable "
                              f"(read-only); {fix} or fix its permissions.")
    return path


@contextmanager
def atomic_dir(path):
    """Yield a temporary sibling directory; on success it replaces ``path`` (an older one is removed
    only then), on failure it is deleted: a directory output is never left half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
