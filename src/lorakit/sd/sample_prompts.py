"""kohya's sample-prompt files (``--sample_prompts``): ``.txt`` one prompt per line, ``.toml``, ``.json``.

A line is ``prompt --n negative --w 512 --h 768 --s 28 --l 7.5 --g 3.5 --d 42 --ss euler_a`` (kohya's
``line_to_prompt_dict``: the text is split on `` --``; ``#`` lines and blank lines are skipped). A TOML
file has a ``[prompt]`` table of defaults and ``[[prompt.subset]]`` entries; a JSON file is a list of
lines or of dicts with kohya's keys (``prompt``, ``negative_prompt``, ``width``, ``height``,
``sample_steps``, ``scale``, ``seed``, ``sample_sampler``).

``read_prompt_file`` is the one parser: the trainer samples with it and ``lorakit validate`` checks
with it (``prompt_problems``: every line's options, the sampler names, the sizes), so a file that
validates samples, and every error names the file and the line (or TOML/JSON entry).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

# kohya option -> (field, type)
OPTIONS = {"w": ("width", int), "h": ("height", int), "d": ("seed", int), "s": ("steps", int),
           "l": ("cfg", float), "g": ("guidance", float), "n": ("negative", str), "ss": ("sampler", str)}
FIELD_TYPES = {"prompt": str, **dict(OPTIONS.values())}
TYPE_WORDS = {int: "an integer", float: "a number", str: "a string"}
KOHYA_KEYS = {"prompt": "prompt", "negative_prompt": "negative", "width": "width", "height": "height",
              "sample_steps": "steps", "scale": "cfg", "guidance_scale": "guidance", "seed": "seed",
              "sample_sampler": "sampler"}


@dataclass
class SamplePrompt:
    """One sample image request; kohya's defaults (512x512, 30 steps); cfg/guidance/seed/sampler None = the
    caller's (kohya: CFG 7.5 for SD, 1.0 for FLUX.1 with distilled guidance ``--g`` 3.5)."""

    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    steps: int = 30
    cfg: float | None = None
    seed: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    where: str = field(default="", compare=False)
    """Where it was read (``prompts.txt:3``, ``prompts.toml [[prompt.subset]] 2``): errors name it."""

    def __post_init__(self):
        self.steps = max(1, min(1000, int(self.steps)))  # kohya clamps


def parse_line(line: str, where: str = "line") -> SamplePrompt:
    """One kohya prompt line -> SamplePrompt; a malformed option is an error naming it."""
    prompt, *args = line.strip().split(" --")
    values: dict = {"prompt": prompt.strip()}
    for arg in args:
        m = re.match(r"(ss|[whdslgn])\s+(.+)", arg.strip(), re.IGNORECASE)
        if m is None:
            raise ValueError(f"{where}: unknown option '--{arg.strip()}'; kohya sample prompts take --n (negative), "
                             "--w, --h (size), --s (steps), --l (CFG scale), --g (FLUX.1 guidance), --d (seed), "
                             "--ss (sampler).")
        field, typ = OPTIONS[m.group(1).lower()]
        try:
            values[field] = typ(m.group(2).strip())
        except ValueError:
            raise ValueError(f"{where}: --{m.group(1)} {m.group(2).strip()!r} is not a valid "
                             f"{typ.__name__}.") from None
    return SamplePrompt(**values, where=where)


def _from_dict(d: dict, where: str) -> SamplePrompt:
    unknown = sorted(set(d) - set(KOHYA_KEYS) - {"enum", "subset", "controlnet_image"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected {sorted(KOHYA_KEYS)}.")
    if "prompt" not in d:
        raise ValueError(f"{where}: no 'prompt'.")
    values = {KOHYA_KEYS[k]: v for k, v in d.items() if k in KOHYA_KEYS}
    for name, value in values.items():
        typ = FIELD_TYPES[name]
        ok = isinstance(value, typ if typ is not float else (int, float)) and not isinstance(value, bool)
        if not ok:
            key = next(k for k, f in KOHYA_KEYS.items() if f == name and k in d)
            raise ValueError(f"{where}: {key}={value!r}; expected {TYPE_WORDS[typ]}.")
    return SamplePrompt(**values, where=where)


def _decode(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); re-save it as UTF-8.") from None


def read_prompt_file(path) -> list[SamplePrompt]:
    """Read a kohya sample-prompt file (see the module docstring); errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample prompt file {path} does not exist.")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(_decode(path))
        except tomllib.TOMLDecodeError as exc:  # its message ends "(at line N, column M)"
            raise ValueError(f"{path}: not valid TOML: {exc}.") from None
        base = data.get("prompt")
        if not isinstance(base, dict) or not isinstance(base.get("subset"), list) or \
                not all(isinstance(x, dict) for x in base["subset"]):
            raise ValueError(f"{path}: expected a [prompt] table with [[prompt.subset]] entries (kohya's format).")
        defaults = {k: v for k, v in base.items() if k != "subset"}
        return [_from_dict({**defaults, **s}, f"{path} [[prompt.subset]] {i + 1}") for i, s in enumerate(base["subset"])]
    if path.suffix == ".json":
        try:
            items = json.loads(_decode(path))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}).") from None
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of prompt strings or dicts.")
        out = []
        for i, x in enumerate(items):
            where = f"{path} item {i + 1}"
            if not isinstance(x, (str, dict)):
                raise ValueError(f"{where}: expected a prompt line or a dict with kohya's keys, got {x!r}.")
            out.append(parse_line(x, where) if isinstance(x, str) else _from_dict(x, where))
        return out
    lines = _decode(path).splitlines()
    return [parse_line(line, f"{path}:{n}") for n, line in enumerate(lines, 1)
            if line.strip() and not line.startswith("#")]


def prompt_problems(path) -> list[str]:
    """Every problem of a prompt file as the trainer would meet it, without a model: parse errors, then
    per prompt a size the pipeline refuses, a non-finite CFG scale, a seed beyond 64 bits, an unknown
    ``--ss`` sampler. Each names the file and the line."""
    from .samplers import check_sampler

    try:
        prompts = read_prompt_file(path)
    except (ValueError, OSError) as exc:
        return [str(exc)]
    if not prompts:
        return [f"{path}: no prompts (every line is blank or a # comment); add one or unset sample.prompts."]
    problems = []
    for p in prompts:
        if p.width < 8 or p.height < 8 or p.width % 8 or p.height % 8:
            problems.append(f"{p.where}: size {p.width}x{p.height}; --w and --h must be positive multiples of 8.")
        if p.cfg is not None and not math.isfinite(p.cfg):
            problems.append(f"{p.where}: --l {p.cfg}; expected a finite CFG scale such as 7.5.")
        if p.seed is not None and not p.seed < 2**63:
            problems.append(f"{p.where}: --d {p.seed}; expected a seed below 2**63 (negative: the run's seed).")
        try:
            if p.sampler:
                check_sampler(p.sampler)
        except ValueError as exc:
            problems.append(f"{p.where}: --ss {p.sampler!r}: {exc}")
    return problems
