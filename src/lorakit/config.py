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
    decompose_factor: int = -1
    """LoKr: split each dimension as (f, dim/f) when f divides it; -1 splits closest to sqrt(dim)."""
    decompose_both: bool = False
    """LoKr: also factor the small Kronecker factor W1 into rank-r factors when r < max(W1 shape)/2."""
    use_effective_conv2d: bool = False
    """LoHa/LoKr on k×k convolutions: Tucker (CP) form with an (r, r, kh, kw) core instead of a flat (r, in·k·k) factor."""
    adalora: AdaLoraConfig | None = None
    """AdaLoRA schedule (variant ``adalora``); ``r`` is the initial rank. ``None`` uses the defaults."""
    quantize: str = "none"
    """QLoRA base weights: ``nf4`` or ``fp4`` stores every Linear/Conv1D except the output head and
    ``modules_to_save`` in 4 bits (:mod:`lorakit.quant`); ``none`` keeps them as they are."""
    double_quant: bool = True
    """With ``quantize``: also quantise the per-block scales to 8 bits (0.516 instead of 0.5625 bytes/weight)."""
    compute_dtype: str = "float32"
    """With ``quantize``: dtype the 4-bit weights are dequantised to for each matmul (float32/bfloat16/float16)."""

    def __post_init__(self):
        if isinstance(self.adalora, dict):
            self.adalora = AdaLoraConfig(**self.adalora)
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

        inits = getattr(VARIANTS.get(self.variant), "INITS", INITS)  # each variant lists the inits it has
        if self.init not in inits:
            e.append(f"init={self.init!r}: expected one of {list(inits)} for variant {self.variant!r}.")
        if not isinstance(self.decompose_factor, int) or not (self.decompose_factor == -1 or self.decompose_factor > 0):
            e.append(f"decompose_factor={self.decompose_factor!r}: expected -1 (split near sqrt) or a positive integer.")
        if self.adalora is not None:
            if self.variant != "adalora":
                e.append(f"adalora is set but variant={self.variant!r}; set variant='adalora' or drop adalora.")
            if isinstance(self.adalora, AdaLoraConfig):
                e += self.adalora.problems(self.r)
            else:
                e.append(f"adalora={self.adalora!r}: expected an AdaLoraConfig or a dict of its fields.")
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
        for name in ("target_modules", "layers_to_transform"):  # an empty selection adapts nothing
            if getattr(self, name) in ([], ()):
                e.append(f"{name}=[]: selects no module; list at least one, or use null (the defaults).")
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


@dataclass
class AdaLoraConfig:
    """AdaLoRA's rank-allocation schedule (Zhang et al. 2023, arXiv 2303.10512); defaults as PEFT.

    The layer starts at rank ``LoraConfig.r`` (init_r); the budget of kept singular values falls
    cubically from r·n to target_r·n between ``tinit`` and ``total_step - tfinal``.
    """

    target_r: int = 8
    """Average rank per adapted layer at the end."""
    tinit: int = 0
    """Warm-up steps before any pruning."""
    tfinal: int = 0
    """Final steps with the mask frozen at the target budget."""
    deltaT: int = 1
    """Re-allocate every deltaT steps during the budget phase."""
    beta1: float = 0.85
    """EMA factor of the sensitivity |w·grad|."""
    beta2: float = 0.85
    """EMA factor of the sensitivity's uncertainty."""
    orth_reg_weight: float = 0.5
    """γ of the orthogonality regulariser γ·mean(||PᵀP−I||_F, ||QQᵀ−I||_F) added to the loss."""
    total_step: int | None = None
    """Total optimizer steps; ``None`` takes the trainer's total step count."""
    rank_pattern: dict[str, list[bool]] | None = None
    """Kept singular values per module path (written by the allocator; saved with the adapter)."""

    def problems(self, init_r: int | None = None, training: bool = False) -> list[str]:
        """Problems with the schedule; ``training`` adds the checks that matter only when allocating ranks."""
        e: list[str] = []
        for name in ("target_r", "deltaT"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                e.append(f"adalora.{name}={v!r}: expected a positive integer.")
        for name in ("tinit", "tfinal"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                e.append(f"adalora.{name}={v!r}: expected an integer >= 0.")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 < v < 1:
                e.append(f"adalora.{name}={v!r}: expected a number strictly between 0 and 1 (default 0.85).")
        if not isinstance(self.orth_reg_weight, (int, float)) or self.orth_reg_weight < 0:
            e.append(f"adalora.orth_reg_weight={self.orth_reg_weight!r}: expected a number >= 0.")
        if isinstance(init_r, int) and isinstance(self.target_r, int) and self.target_r > init_r and training:
            e.append(f"adalora.target_r={self.target_r} exceeds the initial rank r={init_r}; "
                     "AdaLoRA only prunes, so set r >= target_r (the paper uses r = 1.5·target_r).")
        ts = self.total_step
        if ts is not None and (not isinstance(ts, int) or ts <= 0):
            e.append(f"adalora.total_step={ts!r}: expected a positive integer or None (trainer's total).")
        elif ts is not None and isinstance(self.tinit, int) and isinstance(self.tfinal, int) \
                and self.tinit >= ts - self.tfinal:
            e.append(f"adalora: tinit={self.tinit} >= total_step - tfinal = {ts - self.tfinal} leaves no budget "
                     "phase; lower tinit/tfinal or raise total_step.")
        return e
