"""The adapters a server knows (subdirectories of its adapter directory, plus runtime registrations)
and the bounded set resident in the model: LRU eviction of idle, unpinned adapters (vLLM's
``LRUCacheLoRAModelManager``, LoRAX's ``--max-active-adapters``).

An adapter directory's entries are ``NAME/adapter_config.json`` (a PEFT adapter) or
``NAME/adapter/adapter_config.json`` (a ``lorakit train`` run folder, so ``--adapters runs/`` works).
The names of the base model (``base``, ``""`` and the base model's own name) are reserved."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import lorakit

BASE_NAMES = ("", "base")
CONFIG = "adapter_config.json"


class AdapterError(Exception):
    """A client-visible adapter problem; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.code = status, code


def check_name(name: str, reserved=BASE_NAMES) -> str:
    """Adapter names are plain directory names: no separators, no '..', nothing absolute; not a base name."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or name.startswith("~") or "\0" in name or "." in name or Path(name).is_absolute():
        raise AdapterError(f"invalid adapter name {name!r}: use a plain directory name inside the adapter "
                           "directory (no '/', '\\', '.', '..' or absolute paths).")
    if name in reserved:
        raise AdapterError(f"adapter name {name!r} is reserved for the base model ({sorted(set(reserved) - {''})}); "
                           "rename the adapter.")
    return name


def adapter_dir(path: Path) -> Path | None:
    """``path`` itself when it holds adapter_config.json, else ``path/adapter`` (a train run), else None."""
    for candidate in (path, path / "adapter"):
        if (candidate / CONFIG).is_file():
            return candidate
    return None


def scan(root: Path, reserved=BASE_NAMES) -> tuple[dict[str, Path], list[str]]:
    """The adapters in ``root`` by name, and why each other entry is not one (for start-up messages)."""
    root, found, skipped = Path(root).resolve(), {}, []
    for p in sorted(root.iterdir()):
        where = adapter_dir(p) if p.is_dir() else None
        if where is None:
            skipped.append(f"{p.name}: {'not a directory' if not p.is_dir() else f'no {CONFIG} (nor adapter/{CONFIG})'}")
        elif root not in where.resolve().parents:  # a symlink leading out of DIR
            skipped.append(f"{p.name}: leads outside {root}")
        elif "." in p.name or p.name in reserved:
            skipped.append(f"{p.name}: {'reserved for the base model' if p.name in reserved else 'has a dot'}; "
                           "rename the directory")
        else:
            found[p.name] = where
    return found, skipped


class Registry:
    """Known adapters -> paths; resident ones in LRU order. Not thread-safe: the engine serialises calls."""

    def __init__(self, model, root: str | None, max_loaded: int, pinned: list[str] = (), reserved=BASE_NAMES):
        self.model, self.max_loaded, self.reserved = model, max_loaded, tuple(reserved)
        self.root = Path(root).resolve() if root is not None else None
        self.paths: dict[str, Path] = {}  # runtime registrations
        self.loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.pinned: set[str] = set()
        self.in_use: dict[str, int] = {}
        for name in pinned:
            self.acquire(name)
            self.release(name)
            self.pinned.add(name)

    # -- what exists -------------------------------------------------------------------------------
    def _inside(self, path: Path) -> Path:
        if self.root is None:
            raise AdapterError("this server has no adapter directory (start it with --adapters DIR).", 400)
        resolved = (self.root / path).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise AdapterError(f"adapter path {str(path)!r} is outside the adapter directory; only adapters "
                               f"inside {self.root} can be loaded.", 400)
        found = adapter_dir(resolved)
        if found is None:
            raise AdapterError(f"{str(path)!r} is not an adapter directory (no {CONFIG}, nor adapter/{CONFIG}) "
                               "inside the adapter directory.", 404, "model_not_found")
        return found

    def available(self) -> dict[str, Path]:
        """Every adapter a request may name: entries of the root (see the module docstring), and runtime ones."""
        return (scan(self.root, self.reserved)[0] if self.root is not None else {}) | self.paths

    def path_of(self, name: str) -> Path:
        check_name(name, self.reserved)
        known = self.available()
        if name not in known:
            raise AdapterError(f"unknown model {name!r}; available: {['base', *sorted(known)]}.", 404,
                               "model_not_found")
        return known[name]

    # -- runtime registration (POST /v1/load_lora_adapter, /v1/unload_lora_adapter) ----------------------
    def register(self, name: str, path: str | None, pin: bool = False) -> None:
        check_name(name, self.reserved)
        if pin and name not in self.pinned and len(self.pinned) + 1 >= self.max_loaded:
            raise AdapterError(f"pinning {name!r} would leave no free slot of the {self.max_loaded} for the other "
                               "adapters; load it unpinned, or start the server with a larger --max-loaded.")
        if name in self.available() and path is not None and self._inside(Path(path)) != self.available()[name]:
            raise AdapterError(f"an adapter named {name!r} already exists; unload it first or pick another name.",
                               400)
        self.paths[name] = self._inside(Path(path if path is not None else name))
        self.acquire(name)
        self.release(name)
        if pin:
            self.pinned.add(name)

    def unregister(self, name: str) -> None:
        check_name(name, self.reserved)
        if name not in self.loaded and name not in self.paths:
            raise AdapterError(f"adapter {name!r} is not loaded; loaded: {sorted(self.loaded)}.", 404,
                               "model_not_found")
        if self.in_use.get(name):
            raise AdapterError(f"adapter {name!r} is serving {self.in_use[name]} request(s); try again when "
                               "they finish.", 409, "adapter_in_use")
        self.pinned.discard(name)
        self.paths.pop(name, None)
        if name in self.loaded:
            self._evict(name)

    # -- residency -------------------------------------------------------------------------------------
    def can_acquire(self, name: str) -> bool:
        """Whether ``name`` is resident or a slot can be freed for it now."""
        return name in self.loaded or len(self.loaded) < self.max_loaded or self._victim() is not None

    def _victim(self) -> str | None:
        return next((n for n in self.loaded if n not in self.pinned and not self.in_use.get(n)), None)

    def acquire(self, name: str) -> None:
        """Make ``name`` resident (loading it, evicting the LRU idle adapter if full) and mark it in use."""
        path = self.path_of(name)
        if name not in self.loaded:
            if len(self.loaded) >= self.max_loaded:
                victim = self._victim()
                if victim is None:
                    raise AdapterError(f"all {self.max_loaded} adapter slots are pinned or busy; retry later.",
                                       503, "adapter_capacity")
                self._evict(victim)
            try:
                lorakit.load_adapter(self.model, path, name, activate=False)
            except Exception as exc:  # a broken adapter file must not take the server down
                raise AdapterError(f"adapter {name!r} could not be loaded: {exc}", 400, "adapter_load_failed") from exc
            self.loaded[name] = None
        self.loaded.move_to_end(name)
        self.in_use[name] = self.in_use.get(name, 0) + 1

    def release(self, name: str) -> None:
        self.in_use[name] -= 1
        if not self.in_use[name]:
            del self.in_use[name]

    def _evict(self, name: str) -> None:
        lorakit.delete_adapter(self.model, name)
        del self.loaded[name]
