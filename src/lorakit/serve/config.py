"""``ServeConfig``: every knob of ``lorakit serve``, validated at once (``ConfigError``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError


@dataclass
class ServeConfig:
    base: str
    """Base model: a local Hugging Face model directory (config.json, weights, tokenizer)."""
    adapters: str | None = None
    """Directory whose subdirectories are PEFT adapters; the only place adapters are loaded from."""
    host: str = "127.0.0.1"
    """Interface to bind; anything but loopback exposes the server to the network."""
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
    allow_runtime_loading: bool = True
    """Enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter."""
    drain_timeout: float = 30.0
    """Seconds shutdown waits for in-flight requests to finish."""

    def validate(self) -> ServeConfig:
        errors = []
        if not Path(self.base).is_dir():
            errors.append(f"base={self.base!r} is not a directory; give a local Hugging Face model directory.")
        if self.adapters is not None and not Path(self.adapters).is_dir():
            errors.append(f"adapters={self.adapters!r} is not a directory; give the folder holding adapter "
                          "subdirectories (each with adapter_config.json).")
        for name in ("max_loaded", "max_batch", "max_queue", "max_prompt_tokens", "max_tokens"):
            if int(getattr(self, name)) < 1:
                errors.append(f"{name}={getattr(self, name)}: must be at least 1.")
        if not 0 <= self.port < 65536:
            errors.append(f"port={self.port}: expected 0..65535.")
        if len(self.pinned) > self.max_loaded:
            errors.append(f"{len(self.pinned)} pinned adapters but max_loaded={self.max_loaded}; raise max_loaded.")
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
