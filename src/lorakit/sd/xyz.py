"""The X/Y/Z plot (A1111 ``scripts/xyz_grid.py``): one image per (x, y, z) cell, X across, Y down, one
sub-grid per Z value, "Label: value" in the margins.

Axes are ``"Type: v1, v2, ..."`` (CSV; quote values holding commas). Integer ranges ``1-5``,
``1-5 (+2)``, ``1-10 [5]`` (linspace); float ranges ``0-1 (+0.25)``, ``0-1 [5]``. Types:
Prompt S/R (the first value must occur in the prompt or negative; each value replaces every
occurrence), Seed, Steps, CFG Scale, Sampler, Schedule type, Clip skip, Distilled CFG Scale and Shift
(FLUX.1/SD3), and two LoRA axes on the
prompt's *first* ``<lora:...>`` tag: LoRA strength (sets te and unet) and LoRA file (swaps the name,
e.g. one file per epoch). Every LoRA file is loaded once; cells only switch live adapters.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from io import StringIO

import numpy as np

from .embeddings import EmbeddingDB
from .generate import generate_images
from .grid import Layout, contact_sheet, side_by_side
from .infotext import create_infotext, parse_infotext, quote
from .loras import LoraIndex, re_tag

re_range = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
re_range_float = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
re_range_count = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*\])?\s*")
re_range_count_float = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*\])?\s*")

# type -> (value type, generate_images keyword or None for prompt edits)
AXES: dict[str, tuple[type, str | None]] = {
    "Prompt S/R": (str, None), "Seed": (int, "seed"), "Steps": (int, "steps"), "CFG Scale": (float, "cfg_scale"),
    "Sampler": (str, "sampler"), "Schedule type": (str, "schedule"), "Clip skip": (int, "clip_skip"),
    "LoRA strength": (float, None), "LoRA file": (str, None),
    "Distilled CFG Scale": (float, "guidance"), "Shift": (float, "shift"),  # FLUX.1 / SD3
}


def _csv(text: str) -> list[str]:
    return [v.strip() for v in next(csv.reader(StringIO(text), skipinitialspace=True), [])]


def expand(values: list[str], typ: type) -> list:
    """A1111's range expansion for int and float axes; other values are converted as they are."""
    out: list = []
    for val in values:
        if val.strip() == "":
            continue
        if typ is int and (m := re_range.fullmatch(val)):
            step = int(m.group(3)) if m.group(3) is not None else 1
            out += list(range(int(m.group(1)), int(m.group(2)) + 1, step))
        elif typ is int and (m := re_range_count.fullmatch(val)):
            num = int(m.group(3)) if m.group(3) is not None else 1
            out += [int(x) for x in np.linspace(int(m.group(1)), int(m.group(2)), num).tolist()]
        elif typ is float and (m := re_range_float.fullmatch(val)):
            step = float(m.group(3)) if m.group(3) is not None else 1
            start, end = float(m.group(1)), float(m.group(2))
            out += np.arange(start, end + step, step).tolist()
        elif typ is float and (m := re_range_count_float.fullmatch(val)):
            num = int(float(m.group(3))) if m.group(3) is not None else 1
            out += np.linspace(float(m.group(1)), float(m.group(2)), num).tolist()
        else:
            try:
                out.append(typ(val))
            except ValueError:
                raise ValueError(f"axis value {val!r} is not a valid {typ.__name__} nor a range "
                                 "(1-5, 1-5 (+2), 1-10 [5]).") from None
            if typ is float and not math.isfinite(out[-1]):
                raise ValueError(f"axis value {val!r} is not a finite number.")
    return out


@dataclass
class Axis:
    """One axis: its type, the values as written (for labels) and the parsed values."""

    type: str
    text: str
    values: list = field(default_factory=list)

    @classmethod
    def parse(cls, spec: str) -> Axis:
        kind, sep, rest = spec.partition(":")
        match = {k.lower(): k for k in AXES}.get(kind.strip().lower())
        if not sep or match is None:
            raise ValueError(f"axis {spec!r}: expected 'Type: values' with Type one of {', '.join(AXES)}.")
        values = expand(_csv(rest), AXES[match][0])
        if not values:
            raise ValueError(f"axis {spec!r} has no values.")
        return cls(match, rest.strip(), values)

    def label(self, value, index: LoraIndex | None = None) -> str:
        """"Type: value"; a LoRA file also shows the epoch its metadata records (``ss_epoch``)."""
        shown = f"{value:g}" if isinstance(value, float) else value
        if self.type == "LoRA file" and index is not None and (epoch := _epoch(index, value)) is not None:
            shown = f"{shown} (epoch {epoch})"
        return f"{self.type}: {shown}"


def _epoch(index: LoraIndex, name: str) -> str | None:
    from safetensors import safe_open

    try:
        path = index.resolve(name)
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("ss_epoch")
    except Exception:  # noqa: BLE001  (a label only: the cell itself reports a bad file)
        return None


def _first_tag(prompt: str):
    m = next((m for m in re_tag.finditer(prompt) if m.group(1) in ("lora", "lyco")), None)
    if m is None:
        raise ValueError("the LoRA strength / LoRA file axes change the prompt's first <lora:...> tag, but the "
                         "prompt has none; add one such as <lora:name:1>.")
    return m


def apply_axis(axis: Axis, value, cell: dict) -> None:
    """Change one cell's generate_images arguments for ``axis = value``."""
    keyword = AXES[axis.type][1]
    if keyword is not None:
        cell[keyword] = value
    elif axis.type == "Prompt S/R":
        search = axis.values[0]
        cell["prompt"] = cell["prompt"].replace(search, value)
        cell["negative_prompt"] = cell["negative_prompt"].replace(search, value)
    else:
        m = _first_tag(cell["prompt"])
        name, *rest = m.group(2).split(":")
        if axis.type == "LoRA file":
            items = [value, *rest]
        else:
            items = [name, f"{value:g}", f"{value:g}"] + [r for r in rest if "=" not in r][2:]
        cell["prompt"] = f"{cell['prompt'][:m.start()]}<{m.group(1)}:{':'.join(items)}>{cell['prompt'][m.end():]}"


def check_axes(axes: list[Axis | None], prompt: str, negative: str) -> None:
    for axis in axes:
        if axis is None:
            continue
        if axis.type == "Prompt S/R" and axis.values[0] not in prompt and axis.values[0] not in negative:
            raise ValueError(f"Prompt S/R: {axis.values[0]!r} is not in the prompt or the negative prompt (A1111 "
                             "replaces the first value; put it in the prompt).")
        if axis.type in ("LoRA strength", "LoRA file"):
            _first_tag(prompt)


@dataclass
class GridResult:
    """The grid image (infotext in ``.info['parameters']``), cells[z][y][x] and where the cells are."""

    image: object
    cells: list
    layouts: list[Layout]


def xyz_grid(pipe, prompt: str, negative_prompt: str = "", *, x: Axis | None = None, y: Axis | None = None,
             z: Axis | None = None, on_image=None, **kwargs) -> GridResult:
    """Generate every cell with :func:`generate_images` (``kwargs`` are its arguments) and assemble the grid.

    ``on_image(image, (ix, iy, iz))`` is called for each cell as it is made (the CLI saves it there).
    """
    check_axes([x, y, z], prompt, negative_prompt)
    if not isinstance(kwargs.get("lora_dir"), LoraIndex):  # index the folders once, not per cell
        kwargs["lora_dir"] = LoraIndex(kwargs.get("lora_dir"))
    if kwargs.get("embeddings") is not None and not isinstance(kwargs["embeddings"], EmbeddingDB):
        kwargs["embeddings"] = EmbeddingDB(kwargs["embeddings"])
    xs, ys, zs = (a.values if a else [None] for a in (x, y, z))
    cells = []
    for iz, zv in enumerate(zs):
        rows = []
        for iy, yv in enumerate(ys):
            row = []
            for ix, xv in enumerate(xs):
                cell = {"prompt": prompt, "negative_prompt": negative_prompt, **kwargs}
                for axis, value in ((z, zv), (y, yv), (x, xv)):
                    if axis is not None:
                        apply_axis(axis, value, cell)
                image = generate_images(pipe, **{**cell, "count": 1})[0]
                if on_image is not None:
                    on_image(image, (ix, iy, iz))
                row.append(image)
            rows.append(row)
        cells.append(rows)
    layouts: list[Layout] = []
    index = kwargs["lora_dir"]
    col_labels = [x.label(v, index) for v in xs] if x else None
    row_labels = [y.label(v, index) for v in ys] if y else None
    sheets = [contact_sheet(rows, row_labels, col_labels, layout_out=layouts) for rows in cells]
    image = side_by_side(sheets, [z.label(v, index) for v in zs] if z else None)
    first = parse_infotext(cells[0][0][0].info["parameters"])
    params = cells[0][0][0].info["parameters"].strip().split("\n")[-1]
    for name, axis in (("X", x), ("Y", y), ("Z", z)):
        if axis is not None:
            params += f", {name} Type: {axis.type}, {name} Values: {quote(axis.text)}"
    image.info["parameters"] = create_infotext(first["Prompt"], first["Negative prompt"], {}) + "\n" + params
    return GridResult(image, cells, layouts)
