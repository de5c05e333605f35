"""diffusers / PEFT key styles for Stable Diffusion LoRAs, read into and written from ``LoraFile``.

Read: ``unet.<path>.lora_A.weight`` (diffusers' ``pytorch_lora_weights.safetensors``), the older
``attn1.processor.to_q_lora.down.weight`` and ``lora_linear_layer.up.weight`` spellings, and PEFT
directories (``base_model.model.<path>.lora_A.weight`` + ``adapter_config.json``).
Write: one PEFT adapter directory per model part (``OUT/unet``, ``OUT/text_encoder``, ...), each
loadable with ``peft.PeftModel.from_pretrained(part, OUT/part)``. Names the kohya file needs to be
rebuilt exactly (naming style, metadata, which modules lacked alpha, alpha dtype) travel in the
safetensors metadata under ``lorakit.*``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch

from ._io import atomic_dir, read_json, read_safetensors, write_json, write_safetensors
from .errors import LoraFileError, LoraKeyError
from .lorafile import LoraFile, Naming, alpha_of, rank_of
from .sd_keys import UnetLayout
from .validate import ROOTS, check_peft_config

PARTS = ("unet", "text_encoder", "text_encoder_2")
#: diffusers/PEFT tensor suffix -> kohya suffix (longest first when matching)
SUFFIX_TABLE = {
    "lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight", "lora.up.weight": "lora_up.weight",
    "lora_linear_layer.down.weight": "lora_down.weight", "lora_linear_layer.up.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale", "lora_magnitude_vector.weight": "dora_scale", "alpha": "alpha",
}
#: old attention-processor names (``attn1.processor.to_q_lora.down.weight``) -> module, per model part kind
PROCESSOR = {"unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
             "te": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}}
PEFT_PREFIX = "base_model.model."
_SUFFIX_RE = re.compile("(?:^|\\.)(" + "|".join(re.escape(s) for s in sorted(SUFFIX_TABLE, key=len, reverse=True))
                        + ")$")


def is_diffusers(keys) -> bool:
    return bool(keys) and all(k.split(".", 1)[0] in PARTS or k.startswith(PEFT_PREFIX) for k in keys)


def map_key(key: str, default_part: str = "unet") -> tuple[str, str]:
    """diffusers/PEFT tensor key -> (``part.module_path``, kohya suffix); raises KeyError on unknown keys."""
    body = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
    legacy = body.endswith(("_lora.down.weight", "_lora.up.weight"))
    if legacy:
        body = body.replace("_lora.down.weight", ".lora.down.weight").replace("_lora.up.weight", ".lora.up.weight")
    m = _SUFFIX_RE.search(body)
    if not m:
        raise KeyError(f"{key}: unknown LoRA tensor suffix (known: {', '.join(sorted(SUFFIX_TABLE))})")
    module = body[: m.start()].rstrip(".")
    part, _, path = module.partition(".")
    if part not in PARTS:
        part, path = default_part, module
    head, _, last = path.rpartition(".")
    if legacy and last in PROCESSOR["unet"]:
        path = f"{head.removesuffix('.processor')}.{PROCESSOR['unet' if part == 'unet' else 'te'][last]}"
    if not path:
        raise KeyError(f"{key}: no module path before the LoRA suffix")
    return f"{part}.{path}", SUFFIX_TABLE[m.group(1)]


def from_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                    default_part: str = "unet", config: dict | None = None, source: str = "state dict") -> LoraFile:
    """Group diffusers/PEFT keys by module; alphas come from ``.alpha`` keys, the PEFT ``config``
    (``lora_alpha``/``alpha_pattern``) or diffusers' ``lora_adapter_metadata``; otherwise alpha = rank."""
    metadata = dict(metadata or {})
    modules: dict[str, dict[str, torch.Tensor]] = {}
    problems = []
    for key, t in tensors.items():
        if not t.is_floating_point():
            problems.append(f"{key}: dtype {t.dtype} is not a float type (expected fp32, fp16 or bf16)")
            continue
        try:
            mod, suffix = map_key(key, default_part)
        except KeyError as exc:
            problems.append(exc.args[0])
            continue
        modules.setdefault(mod, {})[suffix] = t
    if problems:
        raise LoraKeyError(source, problems, f"{len(problems)} key(s) could not be mapped; nothing was loaded.")
    configs = _alpha_configs(metadata, config, default_part, source)
    fill_alphas(modules, configs, metadata, source)
    return LoraFile(modules, metadata, _naming(metadata, source), source="peft" if config is not None else "diffusers")


def fill_alphas(modules: dict[str, dict[str, torch.Tensor]], configs: dict[str, dict], metadata: dict,
                source: str) -> None:
    """Give LoRA modules without an ``alpha`` tensor the alpha of their part's PEFT config
    (``alpha_pattern`` or ``lora_alpha``), except those lorakit recorded as alpha-less (``lorakit.no_alpha``),
    in the dtype lorakit recorded (``lorakit.alpha_dtype``). Pops those two metadata entries."""
    no_alpha = _meta_json(metadata, "lorakit.no_alpha", [], list, source)
    alpha_dtype = metadata.pop("lorakit.alpha_dtype", "float32")
    if alpha_dtype not in ("float32", "float16", "bfloat16", "float64"):
        raise LoraFileError(source, f"metadata lorakit.alpha_dtype={alpha_dtype!r}: expected float32, float16 or "
                            "bfloat16 (lorakit writes it); remove the entry or re-export the file.")
    alpha_dtype = getattr(torch, alpha_dtype)
    for mod, t in modules.items():
        part, path = mod.split(".", 1)
        if "alpha" not in t and mod not in no_alpha and part in configs and "lora_down.weight" in t:
            alpha = _pattern(path, configs[part].get("alpha_pattern") or {}, configs[part].get("lora_alpha"))
            if alpha is not None:
                t["alpha"] = torch.tensor(float(alpha), dtype=alpha_dtype)


def _meta_json(metadata: dict, key: str, default, kind: type, source: str):
    """A JSON value lorakit (or diffusers) stored in the safetensors metadata, type-checked."""
    raw = metadata.pop(key, None)
    if raw is None:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        value = exc
    if not isinstance(value, kind):
        raise LoraFileError(source, f"metadata {key}: found {raw!r:.80}; expected a JSON {kind.__name__} (as lorakit "
                            "and diffusers write it). Remove the entry or re-export the file.")
    return value


def _naming(metadata: dict, source: str) -> Naming:
    data = _meta_json(metadata, "lorakit.naming", {}, dict, source)
    try:
        naming = Naming(**data)
        if isinstance(naming.layout, dict):
            naming.layout = UnetLayout(**{k: tuple(v) if isinstance(v, list) else v for k, v in naming.layout.items()})
        if naming.unet_style not in ("diffusers", "sai") or not isinstance(naming.te_split, bool) \
                or not isinstance(naming.layout, UnetLayout):
            raise TypeError(naming)
        layout = naming.layout
        if not all(isinstance(x, bool) for x in layout.down_attn + layout.up_attn) \
                or type(layout.layers_per_block) is not int or layout.layers_per_block < 1:
            raise TypeError(layout)
    except (TypeError, AttributeError) as exc:
        raise LoraFileError(source, f"metadata lorakit.naming: found {data!r:.120}; expected lorakit's naming record "
                            "(unet_style, te_split, layout). Remove the entry or re-export the file.") from exc
    return naming


def _pattern(path: str, pattern: dict, default):
    for key, value in pattern.items():  # PEFT's rule: the key matches the end of the module path
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _alpha_configs(metadata: dict, config: dict | None, default_part: str, source: str,
                   parts=PARTS) -> dict[str, dict]:
    """{part: PEFT config fields} from ``config`` or diffusers' ``lora_adapter_metadata`` (checked)."""
    if config is not None:
        return {default_part: config}
    data = _meta_json(dict(metadata), "lora_adapter_metadata", {}, dict, source)
    out: dict[str, dict] = {}
    for key, value in data.items():  # diffusers writes "unet.lora_alpha", "text_encoder.alpha_pattern", ...
        part, _, field = key.partition(".")
        if part in parts:
            out.setdefault(part, {})[field] = value
    for part, cfg in out.items():
        check_peft_config({k: v for k, v in cfg.items() if k in ("lora_alpha", "alpha_pattern")},
                          f"{source} (metadata lora_adapter_metadata, {part})")
    return out


def read_peft_dir(path, allow_pickle: bool = False) -> LoraFile:
    """A PEFT adapter directory, or a directory of them named after model parts (as :func:`write_peft` writes)."""
    path = Path(path)
    dirs = [(p, path / p) for p in PARTS if (path / p / "adapter_config.json").is_file()]
    if not dirs and (path / "adapter_config.json").is_file():
        dirs = [(None, path)]
    if not dirs:
        raise LoraFileError(path, "holds no adapter_config.json (nor unet/, text_encoder/ subfolders with one); "
                                "expected a PEFT adapter directory.")
    merged: LoraFile | None = None
    for part, d in dirs:
        weights = d / "adapter_model.safetensors"
        if not weights.is_file() and allow_pickle:
            weights = d / "adapter_model.bin"
        tensors, meta = read_safetensors(weights, allow_pickle=allow_pickle)
        config = check_peft_config(read_json(d / "adapter_config.json"), d / "adapter_config.json")
        if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
            raise LoraFileError(d, f"peft_type={config.get('peft_type')!r}, use_dora={config.get('use_dora')}; "
                                "lorakit converts plain LoRA PEFT adapters (peft_type LORA) to kohya files.")
        guess = part or ("text_encoder" if any(".text_model." in k for k in tensors) else "unet")
        if part is None and guess == "unet":
            _refuse_text_model(d, tensors, config)
        lf = from_state_dict(tensors, meta, guess, config, source=str(weights))
        if merged is None:
            merged = lf
        else:
            merged.modules.update(lf.modules)
    merged.source = "peft"
    return merged


def _refuse_text_model(d: Path, tensors: dict, config: dict) -> None:
    """A PEFT adapter of a transformers text model (LLM, BERT...) is not an image-model LoRA: say what to do."""
    paths = {re.sub(r"\.lora_[AB]\.weight$", "", re.sub(r"^(base_model\.model\.)+", "", k)) for k in tensors}
    if any(p.split(".")[0] in ROOTS["unet"] for p in paths):
        return
    base = config.get("base_model_name_or_path") or "its base model"
    raise LoraFileError(d, f"is a PEFT adapter of a transformers model ({base}, task_type "
                        f"{config.get('task_type')}, modules such as {sorted(paths)[0]!r}), not a Stable Diffusion "
                        "LoRA; the file tools (convert, merge-loras, resize, extract) work on SD/FLUX.1/SD3 LoRAs. A "
                        "text-model adapter is already in PEFT's format: use it with `lorakit generate`/`predict "
                        "BASE -a DIR`, bake it in with `lorakit merge BASE DIR -o OUT`, or list it with `lorakit "
                        "inspect DIR`.")


def write_peft(lf: LoraFile, directory) -> Path:
    """One PEFT adapter directory per model part; plain LoRA modules only (others raise with their names)."""
    directory = Path(directory)
    bad = [k for k in lf.modules if lf.algo(k) != "lora" or "dora_scale" in lf.modules[k]
           or "lora_mid.weight" in lf.modules[k]]
    if bad:
        raise ValueError(f"{len(bad)} module(s) are not plain LoRA (LoHa/LoKr/DoRA/Tucker), which PEFT's LoRA "
                         f"format cannot hold: {bad[:5]}. Keep them as kohya files, or `lorakit resize` them first.")
    alphas = [t["alpha"] for t in lf.modules.values() if "alpha" in t]
    base_meta = {**lf.metadata, "lorakit.naming": json.dumps(asdict(lf.naming)),
                 "lorakit.no_alpha": json.dumps(sorted(k for k, t in lf.modules.items() if "alpha" not in t)),
                 "lorakit.alpha_dtype": str(alphas[0].dtype).removeprefix("torch.") if alphas else "float32"}
    with atomic_dir(directory) as tmp:
        for part in sorted(lf.parts()):
            _write_part(lf, part, tmp / part, base_meta)
    return directory


def _write_part(lf: LoraFile, part: str, out: Path, base_meta: dict) -> None:
    mods = {k.split(".", 1)[1]: t for k, t in lf.modules.items() if k.split(".", 1)[0] == part}
    tensors = {}
    for p, t in mods.items():
        tensors[f"{PEFT_PREFIX}{p}.lora_A.weight"] = t["lora_down.weight"]
        tensors[f"{PEFT_PREFIX}{p}.lora_B.weight"] = t["lora_up.weight"]
    write_safetensors(out / "adapter_model.safetensors", tensors, base_meta)
    write_json(out / "adapter_config.json", peft_config(mods))


def peft_config(mods: dict[str, dict[str, torch.Tensor]], use_dora: bool = False) -> dict:
    """A PEFT ``LoraConfig`` (as JSON) for {module path: LoRA tensors}: the most common rank and alpha,
    the others in exact-name ``rank_pattern``/``alpha_pattern`` entries."""
    ranks = {p: rank_of(t) for p, t in mods.items()}
    alphas = {p: alpha_of(t) if alpha_of(t) is not None else ranks[p] for p, t in mods.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    a = Counter(alphas.values()).most_common(1)[0][0]
    return {
        "peft_type": "LORA", "r": r, "lora_alpha": a, "target_modules": sorted(mods),
        "rank_pattern": {re.escape(p): v for p, v in ranks.items() if v != r},
        "alpha_pattern": {re.escape(p): v for p, v in alphas.items() if v != a},
        "lora_dropout": 0.0, "bias": "none", "init_lora_weights": True, "use_dora": use_dora,
        "use_rslora": False, "fan_in_fan_out": False, "task_type": None, "inference_mode": True,
        "base_model_name_or_path": None,
    }
