"""The ``data:`` section of an SD training config, with kohya's key names and defaults.

A kohya user's command-line flags map one to one (``--train_data_dir`` -> ``train_data_dir`` ...);
a kohya dataset TOML (``dataset_config``) is read as is, and these values are its fallbacks, as
kohya's command line is (lookup order: subset -> dataset -> general -> these -> kohya's default).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ....train.checks import MAX_REPEATS

# kohya's subset keys: their defaults live on DatasetArgs (one table, shared by the folder layout and the TOML)
SUBSET_KEYS = ("caption_extension", "shuffle_caption", "caption_separator", "keep_tokens", "keep_tokens_separator",
               "secondary_separator", "enable_wildcard", "caption_prefix", "caption_suffix", "caption_dropout_rate",
               "caption_dropout_every_n_epochs", "caption_tag_dropout_rate", "token_warmup_min", "token_warmup_step",
               "flip_aug", "random_crop", "color_aug", "resize_interpolation")
DATASET_KEYS = ("resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                "bucket_no_upscale", "prior_loss_weight")
INTERPOLATIONS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")  # kohya's names


@dataclass
class DatasetArgs:
    """Where the images are and how they become batches (kohya ``train_network.py`` names)."""

    train_data_dir: str | None = None
    """Parent folder of ``N_name`` subfolders: N = repeats per epoch, name = class tokens (the caption
    of images without a caption file). Folders without a number prefix are skipped and reported."""
    reg_data_dir: str | None = None
    """Regularisation (prior-preservation) images in the same layout; balanced to the training count
    as kohya does, each sample's loss weighted by ``prior_loss_weight``."""
    dataset_config: str | None = None
    """A kohya dataset TOML (``[general]``/``[[datasets]]``/``[[datasets.subsets]]``), read as is; it
    replaces ``train_data_dir``/``reg_data_dir``."""
    resolution: int | str | list[int] = 512
    """Training resolution: ``512``, ``"768,512"`` or ``[768, 512]`` (width, height as in kohya). Its area
    sets the bucket sizes."""
    enable_bucket: bool = False
    """Aspect-ratio buckets. Off (kohya's default, so a kohya command line or dataset TOML means the same
    here): one bucket of ``resolution``, every image scaled to cover it and centre-cropped; ``validate``
    names the images that lose their edges that way. Most guides turn it on."""
    min_bucket_reso: int = 256
    """Smallest side of kohya's predefined buckets (pixels). Smaller images are not refused: they are
    upscaled into the bucket of the nearest aspect ratio, as kohya does (``validate`` lists them)."""
    max_bucket_reso: int = 1024
    """Largest bucket side (pixels)."""
    bucket_reso_steps: int = 64
    """Bucket sides are multiples of this (64 for SD1/SD2; SDXL allows 32)."""
    bucket_no_upscale: bool = False
    """Never enlarge: each image gets a bucket of its own size (shrunk to the resolution's area when
    larger), rounded down to ``bucket_reso_steps``; min/max do not bound these buckets, as in kohya (which
    still requires min_bucket_reso <= resolution <= max_bucket_reso). A side below the step: no bucket."""
    caption_extension: str | None = None
    """Caption file = image path with this extension. ``None``: ``.txt`` for the folder layout (what the
    GUIs set), kohya's ``.caption`` for subsets of a dataset TOML."""
    caption_prefix: str | None = None
    """Prepended to every caption (with a space)."""
    caption_suffix: str | None = None
    """Appended to every caption (with a space)."""
    caption_separator: str = ","
    """Separates tags for shuffling, keep_tokens and tag dropout."""
    secondary_separator: str | None = None
    """Joins tags that move together; replaced by ``caption_separator`` after shuffling."""
    keep_tokens: int = 0
    """The first N tags stay in front when shuffling (ignored when ``keep_tokens_separator`` occurs)."""
    keep_tokens_separator: str = ""
    """Text before it is kept fixed; a second occurrence starts a fixed tail (e.g. ``|||``)."""
    shuffle_caption: bool = False
    """Shuffle the flexible tags each time a sample is drawn."""
    caption_dropout_rate: float = 0.0
    """Probability of training a sample with the empty caption."""
    caption_dropout_every_n_epochs: int = 0
    """Every N-th epoch (kohya counts epochs from 1) all captions are empty; 0 turns it off."""
    caption_tag_dropout_rate: float = 0.0
    """Probability of dropping each flexible tag."""
    token_warmup_min: int = 1
    """Token warm-up: flexible tags kept at step 0."""
    token_warmup_step: float = 0
    """Token warm-up length in steps (a value < 1 is a fraction of the run's steps); 0 turns it off."""
    enable_wildcard: bool = False
    """``{a|b|c}`` picks one option per draw (``{{``/``}}`` are literal braces); a multi-line caption file
    then picks one line per draw."""
    flip_aug: bool = False
    """Mirror each sample with probability 1/2 (both versions are cached)."""
    random_crop: bool = False
    """Crop the overflow at a random offset instead of the centre (disables the latent cache)."""
    color_aug: bool = False
    """kohya's colour augmentation: a third of the draws get a hue shift of up to ±16° or a gamma of
    0.95-1.05 (disables the latent cache)."""
    resize_interpolation: str | None = None
    """``lanczos``, ``area``, ``bicubic``, ...; ``None``: area when both sides shrink, else lanczos (kohya)."""
    prior_loss_weight: float = 1.0
    """Loss weight of regularisation samples (training samples weigh 1)."""
    cache_latents: bool = True
    """Encode every image once before training instead of every step (not with ``random_crop``/``color_aug``)."""
    cache_latents_to_disk: bool = False
    """Also keep the latents on disk in ``cache_dir`` so later runs reuse them."""
    cache_text_encoder_outputs: bool = False
    """Encode every caption once (needs frozen text encoders and static captions: no shuffling,
    dropout, wildcards or warm-up)."""
    cache_text_encoder_outputs_to_disk: bool = False
    """Also keep the text-encoder outputs on disk in ``cache_dir``."""
    vae_batch_size: int = 1
    """Images per VAE call while filling the latent cache (kohya's default 1 is safe for SDXL on small GPUs)."""
    cache_dir: str | None = None
    """Disk cache directory; ``None``: ``$LORAKIT_CACHE/sd`` or ``~/.cache/lorakit/sd``. Never inside the
    dataset folders; entries are keyed by content, so one directory serves every run."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_resolution(value) -> tuple[int, int] | None:
    """(width, height) from ``512``, ``"768,512"``, ``[768, 512]``; ``None`` when malformed."""
    if _is_int(value):
        return (value, value)
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not all(p.isdigit() for p in parts) or len(parts) not in (1, 2):
            return None
        value = [int(p) for p in parts]
    if isinstance(value, (list, tuple)) and len(value) in (1, 2) and all(_is_int(v) for v in value):
        return (value[0], value[-1])
    return None


def value_problems(values: dict, where: str) -> list[str]:
    """Type/range problems of kohya keys in ``values`` (a DatasetArgs, a TOML table...), prefixed by ``where``."""
    e: list[str] = []

    def bad(key, expected):
        e.append(f"{where}{key}={values[key]!r}: expected {expected}.")

    for key, v in values.items():
        if key == "resolution":
            res = parse_resolution(v)
            if res is None or min(res) < 8:  # the model's bucket step is checked where the model is known
                bad(key, "an integer >= 8 such as 512, or 'width,height' such as '768,512'")
        elif key in ("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "num_repeats", "batch_size",
                     "vae_batch_size"):
            if not _is_int(v) or v < 1:
                bad(key, "a positive integer")
            elif key == "num_repeats" and v > MAX_REPEATS:
                bad(key, f"at most {MAX_REPEATS:,} (kohya datasets use 1-100)")
        elif key in ("keep_tokens", "caption_dropout_every_n_epochs", "token_warmup_min"):
            if not _is_int(v) or v < 0:
                bad(key, "an integer >= 0")
        elif key in ("caption_dropout_rate", "caption_tag_dropout_rate"):
            if not _is_num(v) or not 0 <= v <= 1:
                bad(key, "a probability in [0, 1]")
        elif key in ("token_warmup_step", "prior_loss_weight"):
            if not _is_num(v) or v < 0:
                bad(key, "a number >= 0")
        elif key == "caption_extension" and v is not None:
            if not isinstance(v, str) or not v.startswith(".") or len(v) < 2:
                bad(key, "an extension with its dot, such as '.txt' or '.caption'")
        elif key == "caption_separator":
            if not isinstance(v, str) or not v:
                bad(key, "a non-empty string such as ','")
        elif key == "resize_interpolation" and v is not None:
            if v not in INTERPOLATIONS:
                bad(key, f"one of {list(INTERPOLATIONS)} or null")
        elif key in ("keep_tokens_separator", "secondary_separator", "caption_prefix", "caption_suffix", "class_tokens",
                     "image_dir", "train_data_dir", "reg_data_dir", "dataset_config", "cache_dir"):
            if v is not None and not isinstance(v, str):
                bad(key, "a string")
        elif key in ("shuffle_caption", "enable_wildcard", "flip_aug", "random_crop", "color_aug", "enable_bucket",
                     "bucket_no_upscale", "is_reg", "cache_latents", "cache_latents_to_disk",
                     "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk"):
            if not isinstance(v, bool):
                bad(key, "true or false")
    return e


def problems(args: DatasetArgs) -> list[str]:
    """Every problem of the ``data:`` section on its own (the dataset folders are checked by ``build_dataset``)."""
    values = {f.name: getattr(args, f.name) for f in fields(args)}
    e = value_problems(values, "data.")
    if e:
        return e
    if args.dataset_config is None and args.train_data_dir is None:
        e.append("data.train_data_dir: missing; set it to the folder holding N_name subfolders "
                 "(e.g. data/img with data/img/10_sks dog/*.png), or set data.dataset_config to a kohya TOML.")
    if args.dataset_config is not None and (args.train_data_dir or args.reg_data_dir):
        e.append("data.dataset_config replaces data.train_data_dir/reg_data_dir (kohya ignores them then); "
                 "remove one of the two.")
    if args.min_bucket_reso > args.max_bucket_reso:
        e.append(f"data.min_bucket_reso={args.min_bucket_reso} is larger than data.max_bucket_reso="
                 f"{args.max_bucket_reso}.")
    if args.cache_latents_to_disk and not args.cache_latents:
        e.append("data.cache_latents_to_disk needs data.cache_latents: true.")
    if args.cache_text_encoder_outputs_to_disk and not args.cache_text_encoder_outputs:
        e.append("data.cache_text_encoder_outputs_to_disk needs data.cache_text_encoder_outputs: true.")
    return e
