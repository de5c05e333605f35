"""The training form, generated from the diffusion config's own dataclasses (``tasks/diffusion/config.py``):
every key of every section with its type, default and attribute docstring (the help text), grouped
as the README groups them. The form edits the YAML ``lorakit train`` reads, exactly:

* a field is shown as the text of its current value (or its default when the YAML leaves it out);
* on save, a field whose text is unchanged keeps its YAML entry as it was (or absent); a changed field
  is parsed with ``lorakit train``'s YAML reader and written;
* when nothing changed the file's text is kept byte for byte; otherwise it is dumped in the same key
  order (comments are lost then: the YAML tab edits the text itself).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Literal

import yaml

from ..tasks.diffusion.config import SECTIONS
from ..train.config import YAML12_FLOAT, read_yaml

# (section, group title, keys), in the README's order; keys left out of every group land in "More"
GROUPS = {
    "model": [("Base model", ["path", "config", "family", "prediction_type", "dtype", "device"])],
    "data": [("Folders", ["train_data_dir", "reg_data_dir", "dataset_config", "prior_loss_weight"]),
             ("Buckets", ["resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                          "bucket_no_upscale"]),
             ("Captions", ["caption_extension", "caption_prefix", "caption_suffix", "caption_separator",
                           "keep_tokens", "keep_tokens_separator", "secondary_separator", "shuffle_caption",
                           "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
                           "token_warmup_min", "token_warmup_step", "enable_wildcard"]),
             ("Augmentation", ["flip_aug", "random_crop", "color_aug", "resize_interpolation"]),
             ("Caches", ["cache_latents", "cache_latents_to_disk", "cache_text_encoder_outputs",
                         "cache_text_encoder_outputs_to_disk", "vae_batch_size", "cache_dir"])],
    "network": [("Network", ["module", "dim", "alpha", "conv_dim", "conv_alpha", "network_weights"]),
                ("Dropout", ["dropout", "rank_dropout", "module_dropout"]),
                ("What learns how fast", ["train_unet_only", "loraplus_lr_ratio", "down_lr_weight", "mid_lr_weight",
                                          "up_lr_weight"])],
    "train": [("Run", ["output_dir", "output_name", "epochs", "max_steps", "batch_size", "grad_accum", "seed"]),
              ("Optimizer", ["lr", "unet_lr", "text_encoder_lr", "optimizer", "optimizer_args", "weight_decay",
                             "betas", "eps", "max_grad_norm"]),
              ("Schedule", ["scheduler", "warmup_steps", "warmup_ratio", "num_cycles", "power"]),
              ("Saving", ["save_every_n_epochs", "save_every_n_steps", "keep_last", "save_precision", "log_every"]),
              ("Noise and loss", ["noise_offset", "noise_offset_random_strength", "adaptive_noise_scale",
                                  "multires_noise_iterations", "multires_noise_discount", "ip_noise_gamma",
                                  "ip_noise_gamma_random_strength", "min_snr_gamma", "debiased_estimation_loss",
                                  "zero_terminal_snr", "loss_type", "huber_c", "min_timestep", "max_timestep"]),
              ("Text encoder", ["clip_skip", "max_token_length"]),
              ("Memory and speed", ["gradient_checkpointing", "mixed_precision", "keep_heap"])],
    "sample": [("Samples", ["prompts", "every_n_epochs", "every_n_steps", "before_training", "sampler"])],
}
UNITS = {"resolution": "px", "min_bucket_reso": "px", "max_bucket_reso": "px", "bucket_reso_steps": "px",
         "epochs": "epochs", "max_steps": "steps", "warmup_steps": "steps", "save_every_n_epochs": "epochs",
         "save_every_n_steps": "steps", "every_n_epochs": "epochs", "every_n_steps": "steps", "log_every": "steps",
         "token_warmup_step": "steps", "batch_size": "images", "vae_batch_size": "images", "keep_last": "files",
         "dim": "rank", "conv_dim": "rank", "min_timestep": "timestep", "max_timestep": "timestep",
         "caption_dropout_every_n_epochs": "epochs", "eval_every": "steps", "save_every": "steps",
         "save_every_epochs": "epochs"}


class _Dumper(yaml.SafeDumper):
    """Quotes strings such as ``1e-4`` that ``lorakit train``'s reader (YAML 1.2 floats) would read as numbers."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+0123456789"))


def dump(data) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)


def attribute_docs(cls) -> dict[str, str]:
    """``name: type = default`` followed by a string literal: the field's docstring (base classes first)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:] + [None], strict=True):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


@dataclass
class Field:
    section: str
    name: str
    hint: object
    default: object
    help: str
    unit: str

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def members(self) -> list:
        """The types of a union without ``None``; any other hint alone."""
        if typing.get_origin(self.hint) in (typing.Union, types.UnionType):
            return [a for a in typing.get_args(self.hint) if a is not type(None)]
        return [self.hint]

    @property
    def kind(self) -> str:
        """``bool`` (checkbox), ``choice`` (select), ``text`` (kept as typed) or ``yaml`` (parsed as YAML)."""
        if self.hint is bool:
            return "bool"
        if all(typing.get_origin(a) is Literal for a in self.members):
            return "choice"
        return "text" if self.members == [str] else "yaml"

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.hint)

    @property
    def choices(self) -> list:
        out = [c for a in self.members for c in typing.get_args(a)]
        return out + ([None] if self.optional else [])

    @property
    def type_name(self) -> str:
        text = re.sub(r"typing\.|<class '(\w+)'>", r"\1", str(self.hint))
        return text.replace("NoneType", "null")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def fields(section: str) -> list[Field]:
    cls = SECTIONS[section]
    hints, docs = typing.get_type_hints(cls), attribute_docs(cls)
    return [Field(section, f.name, hints[f.name], _default(f), docs.get(f.name, ""), UNITS.get(f.name, ""))
            for f in dataclasses.fields(cls)]


def groups(section: str) -> list[tuple[str, list[Field]]]:
    """The section's fields by group; every field appears exactly once."""
    by_name = {f.name: f for f in fields(section)}
    out = [(title, [by_name[k] for k in keys if k in by_name]) for title, keys in GROUPS[section]]
    listed = {k for _, keys in GROUPS[section] for k in keys}
    rest = [f for name, f in by_name.items() if name not in listed]
    return out + ([("More", rest)] if rest else [])


def show(value) -> str:
    """A value as the form shows it (``read_value`` reads it back to the same value)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return yaml.dump(value, Dumper=_Dumper, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def read_value(field: Field, text: str):
    """The form's text for ``field`` as a YAML value (``""``: null; ``text`` fields stay strings)."""
    if field.kind == "bool":
        return text in (True, "true", "on", "1")
    if field.kind == "text":
        return text if text != "" or not field.optional else None
    if field.kind == "choice":  # matched by its shown text: YAML would read 'no' as false
        match = [c for c in field.choices if show(c) == text]
        if not match:
            raise ValueError(f"{field.key}: {text!r} is not one of {', '.join(show(c) or 'null' for c in field.choices)}.")
        return match[0]
    if text.strip() == "":
        return None
    try:
        return read_yaml(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{field.key}: {text!r} is not a valid value ({str(exc).splitlines()[0]}).") from None


def current(data: dict, field: Field):
    """(value shown, whether the YAML sets it)."""
    section = data.get(field.section)
    if isinstance(section, dict) and field.name in section:
        return section[field.name], True
    return field.default, False


def apply_form(data: dict, form: dict[str, str]) -> tuple[dict, list[str]]:
    """A copy of ``data`` with the form's changed fields written (see the module docstring); errors for
    values that are not valid YAML."""
    out, errors = copy.deepcopy(data), []
    for section in SECTIONS:
        for field in fields(section):
            if field.key not in form:
                continue
            value, _ = current(data, field)
            text = form[field.key]
            if field.kind == "bool" and (text in (True, "true", "on", "1")) == bool(value):
                continue
            if field.kind != "bool" and text == show(value):
                continue
            try:
                parsed = read_value(field, text)
            except ValueError as exc:
                errors.append(str(exc))
                continue
            if not isinstance(out.get(section), dict):
                out[section] = {}
            out[section][field.name] = parsed
    return out, errors


def problem_fields(problems: list[str]) -> dict[str, list[str]]:
    """``lorakit validate``'s problems by the field they name (``section.key``); others under ``""``."""
    known = {f.key for s in SECTIONS for f in fields(s)}
    out: dict[str, list[str]] = {}
    for p in problems:
        m = re.search(r"(?<![\w./])(model|data|network|train|sample)\.(\w+)", p)
        key = f"{m[1]}.{m[2]}" if m and f"{m[1]}.{m[2]}" in known else ""
        out.setdefault(key, []).append(p)
    return out
