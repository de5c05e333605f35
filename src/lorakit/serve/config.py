"""``ServeConfig``: every knob of ``lorakit serve``, validated at once (``ConfigError``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError


@dataclass
class ServeConfig:
    base: str
    """Base model: a local Hugging Face model directory (config.json, weights, tokenizer), or
    ``pip:PACKAGE/sub/dir`` (a directory inside an installed Python package)."""
    adapters: str | None = None
    """Directory whose entries are PEFT adapters (``NAME/adapter_config.json``) or ``lorakit train``
    runs (``NAME/adapter/``); the only place adapters are loaded from."""
    host: str = "127.0.0.1"
    """Interface to bind; anything but loopback exposes the server to the network."""
    allowed_hosts: list[str] = field(default_factory=list)
    """Host names accepted besides the bound address (a DNS name or a reverse proxy's); ``*``: any.
    Other Host headers are refused (DNS rebinding), see :mod:`lorakit.serve.guard`."""
    allowed_origins: list[str] = field(default_factory=list)
    """Web origins (``scheme://host[:port]``) whose pages may call the server; ``*``: any. Requests from
    other web pages are refused."""
    max_body_bytes: int = 1 << 20
    """Largest request body (bytes); a larger one gets 413 before it is read."""
    port: int = 8000
    """TCP port (0: any free port)."""
    api_key: str | None = None
    """When set, every /v1 request needs ``Authorization: Bearer <api_key>``."""
    max_loaded: int = 8
    """Adapters resident in the model at once; the least recently used unpinned idle one is evicted."""
    pinned: list[str] = field(default_factory=list)
    """Adapters loaded at start-up and never evicted."""
    max_batch: int = 32
    """Rows (requests) decoded together in one step."""
    max_queue: int = 128
    """Requests waiting for a batch slot; beyond it the server answers 429."""
    max_prompt_tokens: int = 2048
    """Longest prompt accepted (tokens); longer ones get a 400."""
    max_tokens: int = 512
    """Largest ``max_tokens`` a request may ask for; also the default when a request gives none."""
    batching: str = "mixed"
    """``mixed``: rows of any adapters decode together (continuous batching); ``single``: one adapter
    per batch (the S-LoRA paper's baseline, for comparison)."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16."""
    allow_runtime_loading: bool = False
    """Enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter (off by default, as in vLLM)."""
    drain_timeout: float = 30.0
    """Seconds shutdown waits for in-flight requests to finish."""

    def validate(self) -> ServeConfig:
        from ..train.config import resolve_path

        errors = []
        try:
            base = resolve_path(self.base)
        except FileNotFoundError as exc:
            errors.append(str(exc))
        else:
            if not base.is_dir():
                errors.append(f"base={self.base!r} is not a directory; give a local Hugging Face model directory "
                              "(or pip:PACKAGE/dir).")
        if self.adapters is not None and not Path(self.adapters).is_dir():
            errors.append(f"adapters={self.adapters!r} is not a directory; give the folder holding adapter "
                          "subdirectories (each with adapter_config.json).")
        for name in ("max_loaded", "max_batch", "max_queue", "max_prompt_tokens", "max_tokens", "max_body_bytes"):
            if int(getattr(self, name)) < 1:
                errors.append(f"{name}={getattr(self, name)}: must be at least 1.")
        if not 0 <= self.port < 65536:
            errors.append(f"port={self.port}: expected 0..65535.")
        if self.pinned and len(self.pinned) >= self.max_loaded:
            errors.append(f"{len(self.pinned)} pinned adapter(s) with max_loaded={self.max_loaded} would leave no slot "
                          "for any other adapter (pinned ones are never evicted, so requests for the others could "
                          f"never run); raise max_loaded to at least {len(self.pinned) + 1}.")
        if self.pinned and self.adapters is None:
            errors.append("pinned adapters need an adapters directory (--adapters DIR).")
        if self.batching not in ("mixed", "single"):
            errors.append(f"batching={self.batching!r}: expected 'mixed' or 'single'.")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            errors.append(f"dtype={self.dtype!r}: expected float32, bfloat16 or float16.")
        if self.drain_timeout < 0:
            errors.append(f"drain_timeout={self.drain_timeout}: must be >= 0.")
        if errors:
            raise ConfigError(errors, "serve config")
        return self
