"""Safe, atomic file I/O shared by every format: safetensors only by default, no partial files."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import LoraFileError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_HEADER = 100 * 1024 * 1024  # a larger header is corrupt or hostile


def _sibling(path: Path, make) -> Path:
    """A new hidden sibling ``.<name>.<random>.tmp`` made by ``make(candidate)`` (which must fail with
    FileExistsError when the name is taken)."""
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            make(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def _mode_for(path: Path, fresh: Path) -> int:
    """The permissions ``path`` should get: its own when it exists (writing in place keeps them), else
    those the kernel gave ``fresh``, created with ``0o666``/``0o777`` less the umask as ``open``/``mkdir`` are."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return stat.S_IMODE(os.stat(fresh).st_mode)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see a half-written file.

    The file gets the permissions a plain ``open(path, "w")`` gives: ``0o666`` less the umask for a
    new file (the kernel applies it, as for ``open``), the old file's mode when it replaces one.
    ``tempfile.mkstemp`` would make every output ``0600``, unreadable by a web UI running as another user.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, lambda c: os.close(os.open(c, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        mode = _mode_for(path, tmp)
        write(tmp)
        os.chmod(tmp, mode)  # after: some writers (safetensors) replace the file with a 0600 one of their own
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
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        v = v.detach().contiguous()
        storage = v.untyped_storage().data_ptr() if v.numel() else None
        out[k] = v.clone() if storage in seen else v  # also row views of one fused factor
        seen.add(storage)
    tensors = out
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def pickle_hint(path) -> str:
    """The one safe way out for a pickle: convert it to safetensors with a weights-only loader (which
    refuses code objects), then use the new file."""
    path = Path(path)
    return (f"Convert it once to safetensors with a weights-only loader, which refuses code: python -c \"import torch; "
            f"from safetensors.torch import save_file; d = torch.load('{path.name}', map_location='cpu', "
            "weights_only=True); d = d.get('state_dict', d); save_file({k: v.contiguous().clone() for k, v in "
            f"d.items() if isinstance(v, torch.Tensor)}}, '{path.stem}.safetensors')\" and use {path.stem}.safetensors; "
            "if that is refused, the file needs code to load: get a .safetensors release of it instead.")


def safetensors_header_length(path) -> int:
    """The length of ``path``'s safetensors header, after checking that the file is one. Nothing read from
    the file is echoed in the errors (a text file's first bytes are not a number to print)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        raise LoraFileError(path, f"not a safetensors file: it has {size} bytes, too few for a safetensors header.")
    header_len = int.from_bytes(head[:8], "little")
    if head[8:9] != b"{" or header_len < 2:  # the header is a JSON object right after its 8-byte length
        raise LoraFileError(path, "not a safetensors file (it does not start with a safetensors header); expected a "
                            ".safetensors LoRA or model file. Is it the right file?")
    if header_len > MAX_HEADER:
        raise LoraFileError(path, f"corrupt or not a safetensors file: its header is larger than the {MAX_HEADER}-byte "
                            "limit lorakit accepts (real LoRA headers are a few MB at most).")
    if header_len + 8 > size:
        raise LoraFileError(path, f"truncated or corrupt safetensors file: its header runs past the end of the file "
                            f"({size} bytes). Re-download or re-export the file.")
    return header_len


def read_safetensors(path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata. Pickle files are refused unless ``allow_pickle`` (then weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise LoraFileError(path, f"a pickle file ({path.suffix}), which lorakit does not read: unpickling can run "
                                f"arbitrary code. {pickle_hint(path)}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or hostile pickle
            # torch's own message goes on to suggest a full (code-running) unpickle: not relayed
            raise LoraFileError(path, f"could not be read as a weights-only pickle ({type(exc).__name__}): it is "
                                "corrupt or needs code to load, which lorakit will not run. Get a .safetensors "
                                "release of it instead.") from None
        if not isinstance(state, dict):
            raise LoraFileError(path, f"found a pickled {type(state).__name__}; expected a dict of tensors")
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, {}
    safetensors_header_length(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, Exception) as exc:  # safetensors raises several types for a corrupt header
        raise LoraFileError(path, f"could not be read as safetensors ({exc}). The file may be truncated or not a "
                            "safetensors file.") from exc
    return tensors, metadata


def safetensors_keys(path) -> list[str]:
    """The tensor names of a safetensors file from its header alone (a multi-GB checkpoint is not read);
    ``LoraFileError`` when the file is not safetensors."""
    path = Path(path)
    n = safetensors_header_length(path)
    with open(path, "rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LoraFileError(path, "not a safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise LoraFileError(path, "not a safetensors file (its header is not a JSON object).")
    return [k for k in header if k != "__metadata__"]


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
    tmp = _sibling(path, lambda c: c.mkdir(0o777))  # the umask applies, as for a plain mkdir
    try:
        os.chmod(tmp, _mode_for(path, tmp))
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
