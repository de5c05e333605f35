"""Model surgery: find the modules a ``LoraConfig`` targets, wrap them, and freeze everything else.

Matching follows PEFT so that configs mean the same thing in both tools: a list entry matches a
module whose name equals it or ends in ``"." + entry``; a string is a regex matched against the
whole name; ``"all-linear"`` takes every Linear/Conv1D except the output head.
"""

from __future__ import annotations

import re

from torch import nn

from .adapters import spec_for, variant_class
from .adapters.base import _HFConv1D
from .config import LoraConfig
from .layer import LoraLayer, SavedModule

#: target_modules=None falls back to these, keyed by transformers' ``config.model_type``.
DEFAULT_TARGETS = {
    "llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"], "gemma": ["q_proj", "v_proj"], "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"], "bert": ["query", "value"], "roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"], "t5": ["q", "v"], "opt": ["q_proj", "v_proj"],
}
_LINEAR = (nn.Linear,) + ((_HFConv1D,) if _HFConv1D is not None else ())


def _name_matches(name: str, selector) -> bool:
    if isinstance(selector, str):
        return re.fullmatch(selector, name) is not None
    return any(name == t or name.endswith("." + t) for t in selector)


def _layer_index(name: str, layers_pattern) -> int | None:
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else (layers_pattern or [None])
    for pat in patterns:
        m = re.match(rf".*\.{pat}\.(\d+)\." if pat else r".*\.[^.]*\.(\d+)\.", name)
        if m:
            return int(m.group(1))
    return None


def pattern_value(name: str, pattern: dict, default):
    """Value of the first ``pattern`` key whose regex matches the end of ``name`` (PEFT's rule)."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _output_head_names(model: nn.Module) -> set[str]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return {n for n, m in model.named_modules() if head is not None and m is head}


def resolve_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the modules ``config`` adapts in ``model``; raise with the existing names if none match."""
    selector = config.target_modules
    if selector is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise ValueError(f"target_modules is not set and there is no default for model type {model_type!r}. "
                             f"Set target_modules, e.g. ['q_proj', 'v_proj'] or 'all-linear'. "
                             f"Modules in this model: {_module_listing(model)}")
        selector = DEFAULT_TARGETS[model_type]
    heads = _output_head_names(model)
    saved = config.modules_to_save or []
    ltt = config.layers_to_transform
    ltt = [ltt] if isinstance(ltt, int) else ltt
    names = []
    for name, module in plain_modules(model):
        if isinstance(module, SavedModule) or _name_matches(name, saved) or \
                any(("." + s + ".") in ("." + name) for s in saved):
            continue
        if config.exclude_modules is not None and _name_matches(name, config.exclude_modules):
            continue
        if selector == "all-linear":
            layer = module.base_layer if isinstance(module, LoraLayer) else module
            if not isinstance(layer, _LINEAR) or name in heads:
                continue
        elif not _name_matches(name, selector):
            continue
        if ltt is not None and _layer_index(name, config.layers_pattern) not in ltt:
            continue
        names.append(name)
    if not names:
        raise ValueError(f"target_modules={config.target_modules!r} matched no module. "
                         f"Modules in this model: {_module_listing(model)}")
    return names


def plain_modules(model: nn.Module):
    """(name, module) for the user's own modules: wrappers are listed, their insides are not."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p) for p in inside):
            continue
        if isinstance(module, (LoraLayer, SavedModule)):
            inside.append(name + ".")
        yield name, module


def _module_listing(model: nn.Module, limit: int = 60) -> str:
    items = [f"{n} ({type(m).__name__})" for n, m in plain_modules(model)]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def inject(model: nn.Module, config: LoraConfig, adapter_name: str = "default", *, activate: bool = True,
           trainable: bool = True, init: bool = True) -> nn.Module:
    """Add adapter ``adapter_name`` to the modules ``config`` targets, in place; freeze the rest.

    Returns ``model``. With ``activate`` the new adapter becomes the only active one (strength 1);
    with ``trainable`` its parameters (and its bias mode and saved copies) receive gradients.
    ``init=False`` skips data-dependent initialisation (used when weights are loaded right after).
    """
    from .model import lora_layers, set_active_adapters

    if not adapter_name or "." in adapter_name:
        raise ValueError(f"adapter_name={adapter_name!r}: expected a non-empty name without dots.")
    existing = {n for _, layer in lora_layers(model) for n in layer.adapters}
    if adapter_name in existing:
        raise ValueError(f"adapter {adapter_name!r} already exists in this model (adapters: {sorted(existing)}); "
                         "delete it first with lorakit.delete_adapter or choose another name.")
    names = resolve_targets(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    cls = variant_class(config.variant)
    quantize = _quantizer(model, config)
    principal = init and config.init in ("pissa", "olora")
    for name in names:
        module = model.get_submodule(name)
        dense = None
        if principal and getattr(module, "is_quantized", False):  # already 4-bit: factor dequant(W)
            quantize[name] = _QuantJob.requantize(module)
        if name in quantize:  # QLoRA: the base becomes 4-bit (PiSSA/OLoRA first factor the dense weight)
            dense = quantize[name].dense()
            module = dense if principal else quantize.pop(name).build(dense)
        layer = module if isinstance(module, LoraLayer) else LoraLayer(module)
        spec = layer.spec if isinstance(module, LoraLayer) else spec_for(module)
        r = int(pattern_value(name, config.rank_pattern, config.r))
        alpha = pattern_value(name, config.alpha_pattern, config.alpha)
        options = cls.config_options(config) if hasattr(cls, "config_options") else {}  # variant-only fields
        adapter = cls(spec, r=r, alpha=alpha, dropout=config.dropout, use_rslora=config.use_rslora,
                      init=config.init if init else None, base=layer.base_layer, **options)
        if name in quantize:  # QPiSSA (Meng et al. 2024): quantise the residual W − s·BA, not W
            layer.base_layer = quantize.pop(name).build(dense)
            if hasattr(adapter, "init_magnitude"):  # DoRA's m must describe the weight actually used
                adapter.init_magnitude(layer.base_layer)
        weight = layer.base_layer.weight
        adapter.to(device=weight.device, dtype=weight.dtype if weight.is_floating_point() else None)
        adapter.train(layer.base_layer.training)  # a new module starts in train mode; follow the model
        layer.adapters[adapter_name] = adapter
        layer.train(layer.base_layer.training)
        if layer is not module:
            _set_module(model, name, layer)
    for name, job in quantize.items():  # quantised layers without an adapter of this config
        _set_module(model, name, job.build(job.dense()))
    for name in config.modules_to_save or []:
        _add_saved_copy(model, name, adapter_name)
    configs = dict(getattr(model, "lorakit_configs", {}))
    configs[adapter_name] = config
    model.lorakit_configs = configs
    model.lorakit_trainable = set(getattr(model, "lorakit_trainable", set())) | ({adapter_name} if trainable else set())
    if activate:
        set_active_adapters(model, adapter_name)
    _apply_trainable(model)
    return model


class _QuantJob:
    """One layer to (re-)quantise: its dense (out, in) weight and the 4-bit settings to use."""

    def __init__(self, module: nn.Module, quant_type: str, double_quant: bool, compute_dtype):
        self.module, self.settings = module, (quant_type, double_quant, compute_dtype)

    @classmethod
    def requantize(cls, module: nn.Module) -> _QuantJob:
        return cls(module, module.quant_type, module.double_quant, module.compute_dtype)

    def dense(self) -> nn.Linear:
        if getattr(self.module, "is_quantized", False):
            return self.module.dequantized_linear()
        return _dense_copy(self.module)

    def build(self, dense: nn.Linear) -> nn.Module:
        from .quant import Linear4bit

        return Linear4bit.from_linear(dense, *self.settings)


def _dense_copy(module: nn.Module) -> nn.Linear:
    """An nn.Linear view of a Linear or Conv1D base, sharing nothing the caller may still use."""
    if isinstance(module, nn.Linear):
        return module
    dense = nn.Linear(module.weight.shape[0], module.weight.shape[1], bias=module.bias is not None,
                      device=module.weight.device, dtype=module.weight.dtype)
    dense.weight.data.copy_(module.weight.detach().t())
    if module.bias is not None:
        dense.bias.data.copy_(module.bias.detach())
    return dense


def quantize_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """The layers ``config.quantize`` turns 4-bit: all Linear/Conv1D except the output head and
    ``modules_to_save`` (what QLoRA's reference script quantises). Empty when quantize is none."""
    if config.quantize == "none":
        return []
    from .quant import quantizable_names

    saved = config.modules_to_save or []
    skip = _output_head_names(model) | {n for n, _ in model.named_modules()
                                        if any(n == s or n.endswith("." + s) for s in saved)}
    return quantizable_names(model, skip)


def _quantizer(model: nn.Module, config: LoraConfig) -> dict:
    """name -> job for every layer of :func:`quantize_targets`."""
    from .quant import COMPUTE_DTYPES

    settings = (config.quantize, config.double_quant, COMPUTE_DTYPES[config.compute_dtype])
    return {n: _QuantJob(model.get_submodule(n), *settings) for n in quantize_targets(model, config)}


def _add_saved_copy(model: nn.Module, name: str, adapter_name: str) -> None:
    hits = [n for n, _ in plain_modules(model) if n == name or n.endswith("." + name)]
    if not hits:
        raise ValueError(f"modules_to_save entry {name!r} matched no module. "
                         f"Modules in this model: {_module_listing(model)}")
    for hit in hits:
        module = model.get_submodule(hit)
        wrapper = module if isinstance(module, SavedModule) else SavedModule(module)
        wrapper.add(adapter_name)
        if wrapper is not module:
            _set_module(model, hit, wrapper)


def model_biases(model: nn.Module):
    """(name, parameter) of every base-model bias that ``bias="all"`` trains (not saved copies' own)."""
    for pname, p in model.named_parameters():
        if pname.endswith("bias") and not any(w in pname for w in (".adapters.", "original_module.",
                                                                      "modules_to_save.")):
            yield pname, p


def _apply_trainable(model: nn.Module) -> None:
    """Freeze all, then unfreeze each adapter, its bias mode and its saved copies (as configured)."""
    from .model import lora_layers

    configs = getattr(model, "lorakit_configs", {})
    trainable = getattr(model, "lorakit_trainable", set())
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in lora_layers(model):
        for name, adapter in layer.adapters.items():
            for p in adapter.parameters():
                p.requires_grad_(name in trainable)
    for name in trainable & set(configs):
        bias = configs[name].bias
        if bias == "all":
            for _, p in model_biases(model):
                p.requires_grad_(True)
        elif bias == "lora_only":
            for _, layer in lora_layers(model):
                if name in layer.adapters and getattr(layer.base_layer, "bias", None) is not None:
                    layer.base_layer.bias.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, SavedModule):
            for name, copy_ in module.modules_to_save.items():
                for p in copy_.parameters():
                    p.requires_grad_(name in trainable)
