"""kohya's sample-prompt files (``--sample_prompts``): ``.txt`` one prompt per line, ``.toml``, ``.json``.

A line is ``prompt --n negative --w 512 --h 768 --s 28 --l 7.5 --g 3.5 --d 42 --ss euler_a`` (kohya's
``line_to_prompt_dict``: the text is split on `` --``; ``#`` lines and blank lines are skipped). A TOML
file has a ``[prompt]`` table of defaults and ``[[prompt.subset]]`` entries; a JSON file is a list of
lines or of dicts with kohya's keys (``prompt``, ``negative_prompt``, ``width``, ``height``,
``sample_steps``, ``scale``, ``seed``, ``sample_sampler``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# kohya option -> (field, type)
OPTIONS = {"w": ("width", int), "h": ("height", int), "d": ("seed", int), "s": ("steps", int),
           "l": ("cfg", float), "g": ("guidance", float), "n": ("negative", str), "ss": ("sampler", str)}
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
                             "--w, --h (size), --s (steps), --l (CFG scale), --g (FLUX.1 guidance), --d (seed), --ss (sampler).")
        field, typ = OPTIONS[m.group(1).lower()]
        try:
            values[field] = typ(m.group(2).strip())
        except ValueError:
            raise ValueError(f"{where}: --{m.group(1)} {m.group(2).strip()!r} is not a valid "
                             f"{typ.__name__}.") from None
    return SamplePrompt(**values)


def _from_dict(d: dict, where: str) -> SamplePrompt:
    unknown = sorted(set(d) - set(KOHYA_KEYS) - {"enum", "subset", "controlnet_image"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected {sorted(KOHYA_KEYS)}.")
    if "prompt" not in d:
        raise ValueError(f"{where}: no 'prompt'.")
    return SamplePrompt(**{KOHYA_KEYS[k]: v for k, v in d.items() if k in KOHYA_KEYS})


def read_prompt_file(path) -> list[SamplePrompt]:
    """Read a kohya sample-prompt file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample prompt file {path} does not exist.")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        base = data.get("prompt")
        if not isinstance(base, dict) or not isinstance(base.get("subset"), list):
            raise ValueError(f"{path}: expected a [prompt] table with [[prompt.subset]] entries (kohya's format).")
        defaults = {k: v for k, v in base.items() if k != "subset"}
        return [_from_dict({**defaults, **s}, f"{path} subset {i + 1}") for i, s in enumerate(base["subset"])]
    if path.suffix == ".json":
        items = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of prompt strings or dicts.")
        return [parse_line(x, f"{path} item {i + 1}") if isinstance(x, str) else _from_dict(x, f"{path} item {i + 1}")
                for i, x in enumerate(items)]
    lines = path.read_text(encoding="utf-8").splitlines()
    return [parse_line(line, f"{path}:{n}") for n, line in enumerate(lines, 1)
            if line.strip() and not line.startswith("#")]
