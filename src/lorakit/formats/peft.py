"""Hugging Face PEFT's adapter directory: ``adapter_config.json`` + ``adapter_model.safetensors``.

Tensor keys are ``base_model.model.<module path>.<suffix>``; the suffix comes from ``PARAM_KEYS``
(layer kind, lorakit parameter) -> PEFT name. Config fields map through ``CONFIG_KEYS``.
Loading checks every key and shape before anything in the model changes. A file PEFT saved with
``save_embedding_layers`` (its default when ``embed_tokens``/``lm_head`` is targeted) also holds the
base embedding (``...embed_tokens.base_layer.weight``); it is loaded into the model's embedding as
PEFT does (the base model changes for every adapter: a warning says so when the values differ).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, LoraConfig
from ..inject import _name_matches, inject, model_biases, plain_modules
from ..model import _saved_modules, delete_adapter, lora_layers
from ._io import read_json, read_safetensors, write_json, write_safetensors
from .errors import LoraFileError
from .validate import check_peft_config

PREFIX = "base_model.model."
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"

#: (layer kind, lorakit parameter name) -> PEFT key suffix
PARAM_KEYS = {
    ("linear", "lora_A"): "lora_A.weight", ("linear", "lora_B"): "lora_B.weight",
    ("conv", "lora_A"): "lora_A.weight", ("conv", "lora_B"): "lora_B.weight",
    ("embedding", "lora_A"): "lora_embedding_A", ("embedding", "lora_B"): "lora_embedding_B",
    ("linear", "magnitude"): "lora_magnitude_vector", ("conv", "magnitude"): "lora_magnitude_vector",
    ("embedding", "magnitude"): "lora_magnitude_vector",
}
# LyCORIS factors (PEFT keeps them in ParameterDicts, so the key is the bare name)
PARAM_KEYS.update({(kind, p): p for kind in ("linear", "conv") for p in (
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")})
#: (variant, layer kind, parameter) -> PEFT suffix where a variant names a parameter differently
VARIANT_PARAM_KEYS = {("adalora", kind, p): p for kind in ("linear", "conv") for p in ("lora_A", "lora_B", "lora_E")}
#: lorakit variant -> PEFT peft_type
PEFT_TYPES = {"lora": "LORA", "dora": "LORA", "loha": "LOHA", "lokr": "LOKR", "adalora": "ADALORA"}
#: lorakit config field -> PEFT config field
CONFIG_KEYS = {
    "r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "target_modules",
    "exclude_modules": "exclude_modules", "rank_pattern": "rank_pattern", "alpha_pattern": "alpha_pattern",
    "layers_to_transform": "layers_to_transform", "layers_pattern": "layers_pattern", "init": "init_lora_weights",
    "use_rslora": "use_rslora", "bias": "bias", "modules_to_save": "modules_to_save",
}
_SELECTION = ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save")
_LYCORIS_KEYS = {"r": "r", "alpha": "alpha", "rank_pattern": "rank_pattern", "alpha_pattern": "alpha_pattern",
                 "use_effective_conv2d": "use_effective_conv2d", "dropout": "lora_dropout", "bias": "bias",
                 **{k: k for k in _SELECTION}}
_ADALORA_KEYS = {"r": "init_r", "alpha": "lora_alpha", "dropout": "lora_dropout", "bias": "bias",
                 **{k: k for k in _SELECTION},
                 **{f"adalora.{k}": k for k in ("target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2",
                                                 "orth_reg_weight", "total_step")}}
#: peft_type -> (lorakit field -> PEFT field); dotted names reach into ``LoraConfig.adalora``
TYPE_CONFIG_KEYS = {"LORA": CONFIG_KEYS, "LOHA": _LYCORIS_KEYS,
                    "LOKR": {**_LYCORIS_KEYS, "decompose_factor": "decompose_factor",
                             "decompose_both": "decompose_both"},
                    "ADALORA": _ADALORA_KEYS}
#: PEFT's field holding the init, per peft_type
INIT_FIELD = {"LORA": "init_lora_weights", "LOHA": "init_weights", "LOKR": "init_weights",
              "ADALORA": "init_lora_weights"}
INIT_TO_PEFT = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "lycoris": "lycoris"}
#: PEFT fields lorakit cannot honour unless they hold these (default) values
UNSUPPORTED = {"lora_bias": False, "layer_replication": None, "target_parameters": None, "use_qalora": False,
               "trainable_token_indices": None, "alora_invocation_tokens": None, "use_bdlora": None,
               }
#: lorakit variant -> PEFT's flag for it (PEFT has no variant field, one boolean per variant)
VARIANT_FLAGS = {"dora": "use_dora"}
#: extra adapter_config.json entry holding lorakit's QLoRA settings (PEFT ignores it with a warning)
QUANT_KEY, QUANT_FIELDS = "lorakit_quantization", ("quantize", "double_quant", "compute_dtype")


def peft_key(module_path: str, kind: str, param: str, variant: str = "lora") -> str:
    """The PEFT file key for one adapter parameter; raises on a parameter lorakit cannot map."""
    suffix = VARIANT_PARAM_KEYS.get((variant, kind, param)) or PARAM_KEYS.get((kind, param))
    if suffix is None:
        raise ValueError(f"no PEFT key for parameter {param!r} of a {kind} layer at {module_path!r} "
                         f"(variant {variant!r}); known: {sorted(PARAM_KEYS)}")
    return f"{PREFIX}{module_path}.{suffix}"


def _entries(model: nn.Module, adapter_name: str):
    """(PEFT key, live tensor, layer spec or None, lorakit parameter name or None) for one adapter."""
    configs = getattr(model, "lorakit_configs", {})
    if adapter_name not in configs:
        raise ValueError(f"unknown adapter {adapter_name!r}; this model has {sorted(configs)}.")
    bias, variant = configs[adapter_name].bias, configs[adapter_name].variant
    for path, layer in lora_layers(model):
        if adapter_name in layer.adapters:
            for pname, p in layer.adapters[adapter_name].named_parameters():
                yield peft_key(path, layer.spec.kind, pname, variant), p, (layer.spec, variant), pname
            if bias == "lora_only" and getattr(layer.base_layer, "bias", None) is not None:
                yield f"{PREFIX}{path}.base_layer.bias", layer.base_layer.bias, None, None
    if bias == "all":
        for pname, p in model_biases(model):
            yield PREFIX + pname, p, None, None
    for path, saved in _saved_modules(model):
        if adapter_name in saved.modules_to_save:
            for pname, t in saved.modules_to_save[adapter_name].state_dict(keep_vars=True).items():
                yield f"{PREFIX}{path}.{pname}", t, None, None


def adapter_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The live tensors of one adapter under PEFT's key names (adapter factors, biases, saved copies)."""
    return {key: t for key, t, _, _ in _entries(model, adapter_name)}


def _grouped_a_to_peft(spec, a: torch.Tensor) -> torch.Tensor:
    """lorakit's grouped A (r, in/g, *k) as PEFT's ungrouped A (r, in, *k): block-diagonal, zeros elsewhere."""
    g, r = spec.groups, a.shape[0]
    if g == 1:
        return a
    full = a.new_zeros(r, spec.in_features, *a.shape[2:])
    ri, ci = r // g, spec.in_features // g
    for i in range(g):
        full[i * ri:(i + 1) * ri, i * ci:(i + 1) * ci] = a[i * ri:(i + 1) * ri]
    return full


def _grouped_a_from_peft(spec, full: torch.Tensor) -> torch.Tensor:
    g, r = spec.groups, full.shape[0]
    if g == 1 or full.shape[1] != spec.in_features:
        return full  # already lorakit's layout (or wrong: the shape check reports it)
    ri, ci = r // g, spec.in_features // g
    blocks = [full[i * ri:(i + 1) * ri, i * ci:(i + 1) * ci] for i in range(g)]
    off = full.abs().sum() - sum(b.abs().sum() for b in blocks)
    if off > 0:
        raise ValueError("this PEFT adapter's lora_A on a grouped convolution mixes channel groups (PEFT's layout, "
                         "which cannot be merged into grouped weights); lorakit keeps grouped convs mergeable and "
                         "cannot represent it. Exclude the grouped conv from target_modules when training with PEFT.")
    return torch.cat(blocks)


def _magnitude_to_peft(spec, m: torch.Tensor) -> torch.Tensor:
    """PEFT stores a conv DoRA magnitude as (1, out, 1, ...) (its keepdim norm, transposed)."""
    return m.reshape(1, -1, *([1] * len(spec.kernel_size)))


def _magnitude_from_peft(spec, m: torch.Tensor) -> torch.Tensor:
    return m.reshape(-1) if m.numel() == spec.out_features else m  # else the shape check reports it


_GROUPED = (_grouped_a_to_peft, _grouped_a_from_peft)
#: (variant, layer kind, parameter) -> (to PEFT layout, from PEFT layout)
LAYOUTS = {("lora", "conv", "lora_A"): _GROUPED, ("dora", "conv", "lora_A"): _GROUPED,
           ("dora", "conv", "magnitude"): (_magnitude_to_peft, _magnitude_from_peft)}


def _to_peft(where, pname, t):
    conv = LAYOUTS.get((where[1], where[0].kind, pname)) if where is not None else None
    return conv[0](where[0], t) if conv else t


def _from_peft(where, pname, t):
    conv = LAYOUTS.get((where[1], where[0].kind, pname)) if where is not None else None
    return conv[1](where[0], t) if conv else t


def peft_config_dict(model: nn.Module, adapter_name: str = "default", base_model_name_or_path=None) -> dict:
    cfg: LoraConfig = model.lorakit_configs[adapter_name]
    peft_type = PEFT_TYPES[cfg.variant]
    if cfg.use_rslora and peft_type != "LORA":
        raise ValueError(f"PEFT's {peft_type} format has no rank-stabilised scaling; this {cfg.variant} adapter "
                         "uses use_rslora=True. Train it with use_rslora=False to save it in PEFT format.")
    out = {peft: _field(cfg, ours) for ours, peft in TYPE_CONFIG_KEYS[peft_type].items()}
    out[INIT_FIELD[peft_type]] = INIT_TO_PEFT[cfg.init]
    out["target_modules"] = _portable_targets(model, cfg, adapter_name)
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    out.update(peft_type=peft_type, task_type=None, base_model_name_or_path=base_model_name_or_path,
               inference_mode=True, revision=None, auto_mapping=None)
    if peft_type in ("LORA", "ADALORA"):
        out.update(fan_in_fan_out=False, lora_bias=False, use_dora=cfg.variant == "dora", layer_replication=None,
                   megatron_config=None, megatron_core="megatron.core", loftq_config={})
    else:
        out.update(rank_dropout=0.0, module_dropout=0.0)
    if peft_type == "ADALORA":
        _adalora_config_out(cfg, out)
    if cfg.quantize != "none":  # PEFT keeps this in the base model; lorakit re-quantises from it on load
        out[QUANT_KEY] = {k: getattr(cfg, k) for k in QUANT_FIELDS}
    return out


def _field(cfg: LoraConfig, name: str):
    obj = cfg
    for part in name.split("."):
        obj = getattr(obj, part) if obj is not None else None
    if obj is None and name.startswith("adalora."):
        from ..config import AdaLoraConfig

        obj = getattr(AdaLoraConfig(), name.split(".", 1)[1])
    return obj


def _adalora_config_out(cfg: LoraConfig, out: dict) -> None:
    """PEFT's AdaLoRA config: rank_pattern holds the kept-rank masks; total_step must be set."""
    if cfg.rank_pattern:
        raise ValueError("an AdaLoRA adapter cannot also have a LoRA rank_pattern in PEFT's ADALORA format; "
                         "drop rank_pattern (AdaLoRA allocates ranks itself).")
    ada = cfg.adalora
    masks = ada.rank_pattern if ada is not None else None
    out["rank_pattern"] = {f"{path}.lora_E": list(m) for path, m in masks.items()} if masks else None
    # PEFT refuses a config without a budget phase; a missing total (no trainer yet) gets the smallest valid one
    out["total_step"] = out["total_step"] or out["tinit"] + out["tfinal"] + 1


def _portable_targets(model: nn.Module, cfg: LoraConfig, adapter_name: str):
    """Keep the user's selector; resolve ``all-linear``/None to leaf names, or full paths if those overreach."""
    if cfg.target_modules not in (None, "all-linear"):
        return sorted(cfg.target_modules) if not isinstance(cfg.target_modules, str) else cfg.target_modules
    chosen = {p for p, layer in lora_layers(model) if adapter_name in layer.adapters}
    leaves = sorted({p.rsplit(".", 1)[-1] for p in chosen})
    names = [n for n, _ in plain_modules(model)]
    exact = {n for n in names if _name_matches(n, leaves)} == chosen
    return leaves if exact else sorted(chosen)


def save_adapter(model: nn.Module, directory: str | Path, adapter_name: str = "default",
                 base_model_name_or_path: str | None = None) -> Path:
    """Write ``adapter_name`` as a PEFT adapter directory (loadable by ``peft.PeftModel.from_pretrained``)."""
    directory = Path(directory)
    tensors = {k: _to_peft(where, pname, v.detach().cpu()) for k, v, where, pname in _entries(model, adapter_name)}
    tensors = _trim_by_rank_pattern(model, adapter_name, tensors)
    write_safetensors(directory / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
    write_json(directory / CONFIG_FILE, peft_config_dict(model, adapter_name, base_model_name_or_path))
    return directory


def config_from_peft(data: dict) -> LoraConfig:
    """Translate a PEFT ``adapter_config.json`` into a ``LoraConfig``, reporting every unsupported field."""
    errors = []
    peft_type = data.get("peft_type", "LORA")
    variants = {t: v for v, t in PEFT_TYPES.items() if v not in VARIANT_FLAGS}  # flags pick DoRA
    if peft_type not in variants:
        errors.append(f"peft_type={peft_type!r}: lorakit reads {sorted(variants)} adapters.")
    for key, default in UNSUPPORTED.items():
        if data.get(key, default) not in (default, [], {}):
            errors.append(f"{key}={data[key]!r} is not supported by lorakit's PEFT loader.")
    if errors:
        raise ConfigError(errors, "PEFT adapter config")
    kwargs, ada = {"variant": variants[peft_type]}, {}
    for ours, peft in TYPE_CONFIG_KEYS[peft_type].items():
        if peft in data and data[peft] is not None:
            (ada if ours.startswith("adalora.") else kwargs)[ours.split(".")[-1]] = data[peft]
    if peft_type == "ADALORA":
        masks = data.get("rank_pattern") or None
        ada["rank_pattern"] = {k.rsplit(".", 1)[0]: list(v) for k, v in masks.items()} if masks else None
        kwargs.pop("rank_pattern", None)
        kwargs["adalora"] = ada
    flagged = [variant for variant, flag in VARIANT_FLAGS.items() if data.get(flag)]
    if len(flagged) > 1:
        raise ConfigError([f"PEFT config sets {[VARIANT_FLAGS[v] for v in flagged]}; at most one variant "
                           "flag can be true."], "PEFT adapter config")
    if flagged:
        kwargs["variant"] = flagged[0]
    quant = data.get(QUANT_KEY) or {}
    kwargs.update({k: quant[k] for k in QUANT_FIELDS if k in quant})
    init = data.get(INIT_FIELD[peft_type], True)
    kwargs["init"] = "gaussian" if init == "gaussian" else init.split("_niter")[0] if isinstance(init, str) else "kaiming"
    if kwargs["init"] not in INIT_TO_PEFT or peft_type == "ADALORA":
        kwargs["init"] = "kaiming"  # eva/loftq/corda only shape the start; loaded weights replace it
    for key in ("rank_pattern", "alpha_pattern"):
        kwargs[key] = kwargs.get(key) or {}
    if isinstance(kwargs.get("target_modules"), (set, tuple)):
        kwargs["target_modules"] = sorted(kwargs["target_modules"])
    return LoraConfig(**kwargs)


def load_adapter(model: nn.Module, path: str | Path, adapter_name: str = "default", *, activate: bool = True,
                 trainable: bool = False, allow_pickle: bool = False) -> nn.Module:
    """Load a PEFT adapter directory into ``model`` as ``adapter_name``.

    Every missing or unexpected key and every shape mismatch is reported in one error, and the
    model is left as it was. ``.bin`` pickles are refused unless ``allow_pickle=True``.
    """
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_FILE}; expected a PEFT adapter directory "
                                f"(adapter_config.json + {WEIGHTS_FILE}).")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        weights = path / "adapter_model.bin"
    tensors, _ = read_safetensors(weights, allow_pickle=allow_pickle)
    config_path = path / CONFIG_FILE
    try:
        config = config_from_peft(check_peft_config(read_json(config_path), config_path))
    except ConfigError as exc:  # same type, now naming the file
        raise ConfigError(exc.errors, f"PEFT adapter config {config_path}") from exc
    _check_tensors(tensors, weights)
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    inject(model, config, adapter_name, activate=False, trainable=trainable, init=False)
    _resize_by_rank_pattern(model, config, adapter_name)
    entries = {key: (t, spec, pname) for key, t, spec, pname in _entries(model, adapter_name)}
    copies = embedding_copies(model, tensors)
    entries.update({key: (t, None, None) for key, t in copies.items()})
    problems = [f"missing key {k} (expected shape {tuple(t.shape)})" for k, (t, _, _) in entries.items()
                if k not in tensors]
    problems += [f"unexpected key {k} (shape {tuple(v.shape)}) matches nothing in the model"
                 for k, v in tensors.items() if k not in entries]
    converted = {}
    for key, (t, spec, pname) in entries.items():
        if key in tensors:
            try:
                converted[key] = _from_peft(spec, pname, tensors[key])
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
                continue
            if converted[key].shape != t.shape:
                problems.append(f"shape mismatch for {key}: file has {tuple(tensors[key].shape)}, "
                                f"model expects {tuple(t.shape)}")
    if problems:
        delete_adapter(model, adapter_name)
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise LoraFileError(path, [f"does not fit this model ({len(problems)} problems); the model was left unchanged",
                                   *shown], "Is it an adapter for another base model (or another task)?")
    changed = [k for k, t in copies.items() if not torch.equal(t, converted[k].to(t.dtype))]
    if changed:
        warnings.warn(f"{path}: the file's copy of the base embedding differs from this model's ({changed}); it "
                      "was loaded into the model as PEFT does, so the base model and every other adapter use it too.",
                      stacklevel=2)
    with torch.no_grad():
        for key, (target, _, _) in entries.items():
            target.copy_(converted[key].to(target.dtype))
    if activate:
        from ..model import set_active_adapters

        set_active_adapters(model, adapter_name)
    return model


def embedding_copies(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's copies of the base embeddings in ``tensors`` (``save_embedding_layers``): key -> the model's
    weight it replaces (the input/output embedding wrapped by an adapter layer)."""
    embeddings = [getattr(model, f, lambda: None)() for f in ("get_input_embeddings", "get_output_embeddings")]
    found = {}
    for path, layer in lora_layers(model):
        key = f"{PREFIX}{path}.base_layer.weight"
        if key in tensors and any(e is not None and (e is layer or e is layer.base_layer) for e in embeddings):
            found[key] = layer.base_layer.weight
    return found


def _check_tensors(tensors: dict[str, torch.Tensor], path) -> None:
    """Adapter weights must be finite floats: NaN/Inf would silently break every output."""
    bad = [f"{k}: found {'dtype ' + str(t.dtype) if not t.is_floating_point() else 'NaN/Inf values'}; expected "
           "finite floating-point values" for k, t in tensors.items()
           if not t.is_floating_point() or not torch.isfinite(t).all()]
    if bad:
        raise LoraFileError(path, bad, "Nothing was loaded. Re-export the adapter from a run that did not diverge.")


def _rank_masks(config: LoraConfig) -> dict:
    return (config.adalora.rank_pattern or {}) if config.variant == "adalora" and config.adalora else {}


def _trim_by_rank_pattern(model: nn.Module, adapter_name: str, tensors: dict) -> dict:
    """AdaLoRA as PEFT saves it: only the kept singular triplets of each layer are written."""
    masks = _rank_masks(model.lorakit_configs[adapter_name])
    for path, layer in lora_layers(model):
        if path in masks and adapter_name in layer.adapters:
            keep = torch.tensor(masks[path], dtype=torch.bool)
            if layer.adapters[adapter_name].lora_E.shape[0] == keep.numel():  # not yet trimmed
                for p, dim in (("lora_A", 0), ("lora_E", 0), ("lora_B", 1)):
                    key = peft_key(path, layer.spec.kind, p, "adalora")
                    tensors[key] = tensors[key].index_select(dim, keep.nonzero().flatten()).contiguous()
    return tensors


def _resize_by_rank_pattern(model: nn.Module, config: LoraConfig, adapter_name: str) -> None:
    masks = _rank_masks(config)
    for path, layer in lora_layers(model):
        if path in masks and adapter_name in layer.adapters:
            layer.adapters[adapter_name].keep(torch.tensor(masks[path], dtype=torch.bool))
