"""Which folders make the dataset: kohya's ``N_name`` layout or a kohya dataset TOML, as specs.

A ``DatasetSpec`` is one kohya dataset (its own resolution, buckets and batch size); its ``SubsetSpec``
entries are image folders with repeats and caption options. Both sources resolve every key in kohya's
order: subset -> dataset -> ``[general]`` -> the ``data:`` section -> kohya's default.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ....train.checks import MAX_REPEATS
from .args import DATASET_KEYS, SUBSET_KEYS, DatasetArgs, parse_resolution, value_problems
from .buckets import bucket_problems

# keys kohya's schema accepts that change nothing here (lorakit never writes into dataset folders, so
# cache_info's image-info file is not written; the rest are loader settings)
IGNORED_KEYS = ("cache_info", "debug_dataset", "network_multiplier", "custom_attributes", "max_data_loader_n_workers")
# keys kohya accepts whose feature lorakit does not have: an error when set to anything but its off value
UNSUPPORTED_KEYS = ("face_crop_aug_range", "alpha_mask", "metadata_file", "validation_split",
                    "conditioning_data_dir", "validation_seed")
SUBSET_ONLY = ("image_dir", "is_reg")  # kohya's "distinct" subset keys; num_repeats/class_tokens ascend like the rest
KNOWN = set(SUBSET_KEYS) | set(DATASET_KEYS) | set(SUBSET_ONLY) | {"batch_size", "num_repeats", "class_tokens"} \
    | set(IGNORED_KEYS) | set(UNSUPPORTED_KEYS)


@dataclass
class SubsetSpec:
    """One image folder: its repeats, class tokens and the caption/augmentation options that apply to it."""

    image_dir: str
    num_repeats: int = 1
    is_reg: bool = False
    class_tokens: str | None = None
    options: dict = field(default_factory=dict)
    """Every key of ``SUBSET_KEYS`` resolved (caption_extension, shuffle_caption, flip_aug, ...)."""

    def __getattr__(self, name):  # subset.shuffle_caption etc. read like kohya's subset objects
        options = self.__dict__.get("options", {})
        if name in options:
            return options[name]
        raise AttributeError(name)


@dataclass
class DatasetSpec:
    """One kohya dataset: bucket settings, batch size and its subsets."""

    resolution: tuple[int, int]
    enable_bucket: bool
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_reso_steps: int
    bucket_no_upscale: bool
    prior_loss_weight: float
    batch_size: int
    subsets: list[SubsetSpec]


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """(repeats, class tokens) of a kohya ``N_name`` folder; ``None`` when it has no repeat prefix (or N < 1)."""
    head, _, rest = name.partition("_")
    try:
        repeats = int(head)
    except ValueError:
        return None
    return (repeats, rest) if repeats >= 1 else None


def _dataset(values: list[dict], batch_size: int, subsets: list[SubsetSpec]) -> DatasetSpec:
    def get(key):
        return next(v[key] for v in values if key in v)

    steps = get("bucket_reso_steps")
    lo, hi = get("min_bucket_reso"), get("max_bucket_reso")
    # kohya rounds min down and max up to multiples of the step
    lo, hi = lo - lo % steps, hi + (-hi) % steps
    return DatasetSpec(parse_resolution(get("resolution")), get("enable_bucket"), lo, hi, steps,
                       get("bucket_no_upscale"), float(get("prior_loss_weight")),
                       values[0].get("batch_size", batch_size), subsets)


def _subset(values: list[dict], image_dir: str, repeats: int, is_reg: bool, tokens: str | None,
            default_ext: str) -> SubsetSpec:
    options = {}
    for key in SUBSET_KEYS:
        options[key] = next(v[key] for v in values if key in v)
    if options["caption_extension"] is None:
        options["caption_extension"] = default_ext
    return SubsetSpec(image_dir, repeats, is_reg, tokens, options)


def _args_values(args: DatasetArgs) -> dict:
    return {k: getattr(args, k) for k in SUBSET_KEYS + DATASET_KEYS}


def from_folders(args: DatasetArgs, batch_size: int) -> tuple[list[DatasetSpec], list[str]]:
    """One dataset from ``train_data_dir``/``reg_data_dir`` (kohya's DreamBooth method)."""
    problems: list[str] = []
    subsets: list[SubsetSpec] = []
    for key, is_reg in (("train_data_dir", False), ("reg_data_dir", True)):
        root = getattr(args, key)
        if root is None:
            continue
        base = Path(root)
        if not base.is_dir():
            problems.append(f"data.{key}={root!r}: no such folder. It must be the parent of N_name subfolders "
                            "(e.g. data/img with data/img/10_sks dog/).")
            continue
        found = 0
        for sub in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            parsed = parse_folder_name(sub.name)
            if parsed is None:
                problems.append(f"{sub}: skipped, the folder name has no repeat prefix; rename it N_name (N = repeats "
                                f"per epoch >= 1, name = class tokens), e.g. '10_{sub.name}'.")
                continue
            if parsed[0] > MAX_REPEATS:
                problems.append(f"{sub}: {parsed[0]} repeats (the number before '_'); at most {MAX_REPEATS:,} are "
                                "supported (kohya folders use 1-100); rename the folder.")
                continue
            found += 1
            subsets.append(_subset([_args_values(args)], str(sub), parsed[0], is_reg, parsed[1], ".txt"))
        if not found:
            problems.append(f"data.{key}={root!r}: no N_name subfolder; put the images in {base / '10_name'} "
                            "(kohya's layout: the folder name gives the repeats and class tokens).")
    return [_dataset([_args_values(args)], batch_size, subsets)], problems


def _check_keys(table: dict, where: str, allowed: set[str], problems: list[str]) -> None:
    for key, value in table.items():
        if key not in allowed:
            near = difflib.get_close_matches(key, sorted(allowed), n=1)
            problems.append(f"{where}: unknown key {key!r}" + (f"; did you mean {near[0]!r}?" if near else "."))
        elif key in UNSUPPORTED_KEYS and value not in (None, False, 0, 0.0, "", [], {}):
            problems.append(f"{where}: {key}={value!r} is not supported by lorakit; remove it or set it off.")
    problems += value_problems({k: v for k, v in table.items() if k in KNOWN}, f"{where}: ")


def _resolve_dir(image_dir: str, toml_path: Path) -> str:
    path = Path(image_dir)
    if path.is_absolute() or path.exists() or not (toml_path.parent / path).exists():
        return str(path)  # kohya reads relative paths from the working directory
    return str(toml_path.parent / path)


def from_toml(args: DatasetArgs, batch_size: int) -> tuple[list[DatasetSpec], list[str]]:
    """Datasets of a kohya dataset TOML (DreamBooth-style subsets with ``image_dir``)."""
    path = Path(args.dataset_config)
    if not path.is_file():
        return [], [f"data.dataset_config={args.dataset_config!r}: no such file."]
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return [], [f"{path}: not valid TOML ({exc})."]
    problems: list[str] = []
    _check_keys({k: v for k, v in doc.items() if k not in ("general", "datasets")}, str(path), set(), problems)
    general = doc.get("general", {})
    datasets = doc.get("datasets", [])
    if not isinstance(general, dict) or not isinstance(datasets, list):
        return [], [f"{path}: expected a [general] table and [[datasets]] array of tables."]
    _check_keys(general, f"{path} [general]", KNOWN - set(SUBSET_ONLY), problems)
    if not datasets:
        problems.append(f"{path}: no [[datasets]]; add [[datasets]] with [[datasets.subsets]] image_dir = '...'.")
    specs = []
    for i, ds in enumerate(datasets):
        where = f"{path} datasets[{i}]"
        if not isinstance(ds, dict):
            problems.append(f"{where}: expected a table.")
            continue
        _check_keys({k: v for k, v in ds.items() if k != "subsets"}, where, KNOWN - set(SUBSET_ONLY), problems)
        subsets = ds.get("subsets", [])
        if not subsets:
            problems.append(f"{where}: no [[datasets.subsets]]; each dataset needs at least one image_dir.")
        chain = [ds, general, _args_values(args)]
        subset_specs = []
        for j, sub in enumerate(subsets):
            swhere = f"{where}.subsets[{j}]"
            _check_keys(sub, swhere, KNOWN - set(DATASET_KEYS) - {"batch_size"}, problems)
            if "image_dir" not in sub:
                problems.append(f"{swhere}: image_dir is required (the folder of this subset's images).")
                continue
            image_dir = _resolve_dir(str(sub["image_dir"]), path)
            if not Path(image_dir).is_dir():
                problems.append(f"{swhere}: image_dir={sub['image_dir']!r} is not a folder.")
                continue
            repeats = next((v["num_repeats"] for v in (sub, ds, general) if "num_repeats" in v), 1)
            tokens = next((v["class_tokens"] for v in (sub, ds, general) if "class_tokens" in v), None)
            if isinstance(repeats, int) and repeats < 1:
                problems.append(f"{swhere}: num_repeats={repeats} < 1; kohya skips such a subset, so does lorakit.")
                continue
            subset_specs.append(_subset([sub] + chain, image_dir, repeats, bool(sub.get("is_reg", False)), tokens,
                                        ".caption"))
        if not problems:
            specs.append(_dataset(chain, ds.get("batch_size", general.get("batch_size", batch_size)), subset_specs))
    return specs, problems


def dataset_dirs(args: DatasetArgs) -> list[tuple[str, str]]:
    """(config key, folder) of every image folder the config names: ``train_data_dir``/``reg_data_dir``, or
    each subset's ``image_dir`` of a readable dataset TOML (its own problems are reported by ``resolve``)."""
    if args.dataset_config is None:
        return [(k, getattr(args, k)) for k in ("train_data_dir", "reg_data_dir") if getattr(args, k)]
    specs, _ = from_toml(args, 1)
    return [(f"{args.dataset_config} image_dir", sub.image_dir) for spec in specs for sub in spec.subsets]


def resolve(args: DatasetArgs, batch_size: int) -> tuple[list[DatasetSpec], list[str]]:
    """The datasets the config names, and every problem found on the way."""
    specs, problems = (from_toml if args.dataset_config else from_folders)(args, batch_size)
    usable = []
    for spec in specs:
        found = bucket_problems(spec.resolution, enable_bucket=spec.enable_bucket, min_size=spec.min_bucket_reso,
                                max_size=spec.max_bucket_reso, steps=spec.bucket_reso_steps)
        problems += [p for p in found if p not in problems]
        if not found:  # a spec without a bucket list is not scanned (its images have nowhere to go)
            usable.append(spec)
        for sub in spec.subsets:
            for key in ("random_crop", "color_aug"):
                if getattr(sub, key) and args.cache_latents:
                    problems.append(f"{sub.image_dir}: {key} changes the pixels every epoch, so latents cannot be "
                                    f"cached; set data.cache_latents: false or {key}: false.")
    return usable, problems
