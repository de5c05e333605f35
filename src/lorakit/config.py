"""``LoraConfig``: which layers get adapters, and how those adapters are shaped and initialised."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

BIAS_MODES = ("none", "all", "lora_only")


class ConfigError(ValueError):
    """Every problem found in a config, reported at once."""

    def __init__(self, errors: list[str], what: str = "config"):
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"invalid {what} ({len(self.errors)} problem{'s' * (len(self.errors) > 1)}):\n{lines}")


@dataclass
class LoraConfig:
    """Configuration of one LoRA adapter. The update is W' = W + s·B·A with s = alpha/r.

    Field names follow lorakit; :mod:`lorakit.formats.peft` maps them to PEFT's names
    (``alpha`` <-> ``lora_alpha``, ``init`` <-> ``init_lora_weights``, ...).
    """

    r: int = 8
    """Rank of the update (rows of A, columns of B)."""
    alpha: float = 8.0
    """Scale numerator: s = alpha/r, or alpha/sqrt(r) with ``use_rslora``."""
    dropout: float = 0.0
    """Dropout on the adapter branch's input only; 0 adds no work."""
    target_modules: list[str] | str | None = None
    """Names or dotted suffixes (list), a regex matched in full (string), or ``"all-linear"``
    (every Linear/Conv1D except the output head). ``None`` uses the model type's defaults."""
    exclude_modules: list[str] | str | None = None
    """Modules never adapted, with the same matching rules as ``target_modules``."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Per-module rank: regex key matched against the end of the module name."""
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    """Per-module alpha, matched like ``rank_pattern``."""
    layers_to_transform: list[int] | int | None = None
    """Only adapt modules inside these layer indices."""
    layers_pattern: str | list[str] | None = None
    """Name of the layer list (e.g. ``"layers"``, ``"h"``) that holds the index ``layers_to_transform`` reads."""
    init: str = "kaiming"
    """``kaiming`` (B=0), ``gaussian`` (B=0), ``pissa`` or ``olora`` (base weight keeps the residual)."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha/sqrt(r) (Kalajdzievski 2023)."""
    bias: str = "none"
    """``none``; ``all`` trains every bias; ``lora_only`` trains the biases of adapted layers."""
    modules_to_save: list[str] | None = None
    """Modules trained in full and saved with the adapter (e.g. a classifier head)."""
    variant: str = "lora"
    """Adapter variant, from ``lorakit.adapters.VARIANTS``."""
    quantize: str = "none"
    """QLoRA base weights: ``nf4`` or ``fp4`` stores every Linear/Conv1D except the output head and
    ``modules_to_save`` in 4 bits (:mod:`lorakit.quant`); ``none`` keeps them as they are."""
    double_quant: bool = True
    """With ``quantize``: also quantise the per-block scales to 8 bits (0.516 instead of 0.5625 bytes/weight)."""
    compute_dtype: str = "float32"
    """With ``quantize``: dtype the 4-bit weights are dequantised to for each matmul (float32/bfloat16/float16)."""

    def __post_init__(self):
        errors = self.problems()
        if errors:
            raise ConfigError(errors, "LoraConfig")

    def problems(self) -> list[str]:
        """All problems with this config (empty when valid)."""
        from .adapters import VARIANTS  # local: adapters import nothing from config

        e: list[str] = []
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            e.append(f"r={self.r!r}: expected a positive integer rank such as 8 or 16.")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or self.alpha <= 0:
            e.append(f"alpha={self.alpha!r}: expected a positive number (commonly r or 2*r).")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            e.append(f"dropout={self.dropout!r}: expected a number in [0, 1).")
        from .adapters.lora import INITS

        if self.init not in INITS:
            e.append(f"init={self.init!r}: expected one of {list(INITS)}.")
        if self.bias not in BIAS_MODES:
            e.append(f"bias={self.bias!r}: expected one of {list(BIAS_MODES)}.")
        if self.variant not in VARIANTS:
            e.append(f"variant={self.variant!r}: expected one of {sorted(VARIANTS)}.")
        for name in ("target_modules", "exclude_modules"):
            e += _check_selector(name, getattr(self, name))
        for name, cast in (("rank_pattern", int), ("alpha_pattern", float)):
            pattern = getattr(self, name)
            if not isinstance(pattern, dict):
                e.append(f"{name}={pattern!r}: expected a dict of regex -> value.")
                continue
            for key, value in pattern.items():
                e += _check_regex(f"{name} key", key)
                if not isinstance(value, (int, float)) or value <= 0 or (cast is int and int(value) != value):
                    e.append(f"{name}[{key!r}]={value!r}: expected a positive {cast.__name__}.")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear" \
                and self.layers_to_transform is not None:
            e.append("layers_to_transform cannot be combined with a regex target_modules; "
                     "put the layer indices into the regex instead.")
        ltt = self.layers_to_transform
        if ltt is not None and not (isinstance(ltt, int) or (isinstance(ltt, list) and all(isinstance(i, int) for i in ltt))):
            e.append(f"layers_to_transform={ltt!r}: expected an int or a list of ints.")
        from .quant import COMPUTE_DTYPES, QUANT_TYPES

        if self.quantize not in QUANT_TYPES:
            e.append(f"quantize={self.quantize!r}: expected one of {list(QUANT_TYPES)}.")
        if not isinstance(self.double_quant, bool):
            e.append(f"double_quant={self.double_quant!r}: expected true or false.")
        if self.compute_dtype not in COMPUTE_DTYPES:
            e.append(f"compute_dtype={self.compute_dtype!r}: expected one of {list(COMPUTE_DTYPES)}.")
        if self.modules_to_save is not None and not _is_str_list(self.modules_to_save):
            e.append(f"modules_to_save={self.modules_to_save!r}: expected a list of module names.")
        return e

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LoraConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError([f"unknown key {k!r}; known keys: {sorted(known)}" for k in unknown], "LoraConfig")
        return cls(**data)


def _is_str_list(value) -> bool:
    return isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value)


def _check_regex(what: str, pattern: str) -> list[str]:
    try:
        re.compile(pattern)
    except (re.error, TypeError) as exc:
        return [f"{what} {pattern!r} is not a valid regular expression ({exc})."]
    return []


def _check_selector(name: str, value) -> list[str]:
    if value is None or _is_str_list(value):
        return []
    if isinstance(value, str):
        return [] if value == "all-linear" else _check_regex(name, value)
    return [f"{name}={value!r}: expected a list of module names, a regex string or 'all-linear'."]
