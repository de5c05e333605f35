"""Grids: cells land where the layout says, labels are drawn in white margins (pixel checks), A1111 axis
ranges, Prompt S/R rules, and a real X/Y/Z run on a tiny pipeline with a LoRA strength x file sweep."""

import numpy as np
import pytest
from PIL import Image
from sd_models import random_lora

from lorakit.formats.sd_io import write_lora
from lorakit.sd.grid import contact_sheet, side_by_side
from lorakit.sd.infotext import parse_infotext
from lorakit.sd.xyz import Axis, apply_axis, expand, xyz_grid


def _tile(color, size=(40, 30)):
    return Image.new("RGB", size, color)


def test_contact_sheet_layout_and_label_pixels():
    colors = [[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(9, 9, 9), (200, 100, 0), (0, 100, 200)]]
    rows = [[_tile(c) for c in row] for row in colors]
    layouts = []
    sheet = np.asarray(contact_sheet(rows, ["Seed: 1", "Seed: 2"], ["a", "b", "c"], layout_out=layouts))
    lay = layouts[0]
    assert lay.left == 30 and lay.top > 0 and sheet.shape == (lay.top + 60, 30 + 120, 3)
    for r, row in enumerate(colors):
        for c, color in enumerate(row):
            cell = sheet[lay.top + r * 30:lay.top + (r + 1) * 30, lay.left + c * 40:lay.left + (c + 1) * 40]
            assert (cell == color).all()
    top, left = sheet[:lay.top, lay.left:], sheet[lay.top:, :lay.left]
    for margin, n, axis in ((top, 3, 1), (left, 2, 0)):  # every label slot has ink, the rest is white
        assert set(np.unique(margin)) - {255} and (margin.min(axis=2) > 128).mean() > 0.7
        size = margin.shape[axis] // n
        for i in range(n):
            part = margin[:, i * size:(i + 1) * size] if axis == 1 else margin[i * size:(i + 1) * size]
            assert (part < 128).any(), f"label {i} missing"
    bare = contact_sheet(rows)
    assert bare.size == (120, 60)


def test_contact_sheet_errors():
    with pytest.raises(ValueError, match="same size"):
        contact_sheet([[_tile((0, 0, 0)), _tile((0, 0, 0), (10, 10))]])
    with pytest.raises(ValueError, match="col_labels has 1 labels for 2"):
        contact_sheet([[_tile((0, 0, 0)), _tile((0, 0, 0))]], None, ["x"])


def test_side_by_side_titles_and_gap():
    a, b = _tile((255, 0, 0), (50, 40)), _tile((0, 0, 255), (50, 20))
    out = np.asarray(side_by_side([a, b], ["Z: 1", "Z: 2"], gap=6))
    top = out.shape[0] - 40
    assert out.shape[1] == 106 and (out[top:, :50] == (255, 0, 0)).all() and (out[top:top + 20, 56:] == (0, 0, 255)).all()
    assert (out[top + 20:, 56:] == 255).all() and (out[:top] < 128).any()


@pytest.mark.parametrize(("text", "typ", "want"), [
    ("1-4", int, [1, 2, 3, 4]), ("1-10 (+3)", int, [1, 4, 7, 10]), ("10-1 (-4)", int, [10, 6]),
    ("1-3 [5]", int, [1, 1, 2, 2, 3]), ("0-1 (+0.5)", float, [0.0, 0.5, 1.0]), ("0-1 [3]", float, [0.0, 0.5, 1.0]),
    ("2, 5", int, [2, 5])])
def test_a1111_ranges(text, typ, want):
    """As A1111: range(start, end + 1, step), so a descending range stops before end + 1 (10-1 (-4): 10, 6)."""
    assert expand([v.strip() for v in text.split(",")] if "," in text else [text], typ) == want


def test_axis_parsing_and_prompt_edits():
    ax = Axis.parse('Prompt S/R: red, "blue, dark", green')
    assert ax.values == ["red", "blue, dark", "green"]
    cell = {"prompt": "a red cat, red", "negative_prompt": "red dog"}
    apply_axis(ax, "blue, dark", cell)
    assert cell == {"prompt": "a blue, dark cat, blue, dark", "negative_prompt": "blue, dark dog"}
    cell = {"prompt": "x <lora:cat:0.5:te=1> <lora:dog>", "negative_prompt": ""}
    apply_axis(Axis.parse("LoRA strength: 0.25"), 0.25, cell)
    apply_axis(Axis.parse("LoRA file: cat-000004"), "cat-000004", cell)
    assert cell["prompt"] == "x <lora:cat-000004:0.25:0.25> <lora:dog>"
    with pytest.raises(ValueError, match="expected 'Type: values'"):
        Axis.parse("Colour: 1")
    with pytest.raises(ValueError, match="not a valid int"):
        Axis.parse("Seed: 1, x")


def test_sr_string_must_be_in_the_prompt(sd1_pipe):
    with pytest.raises(ValueError, match="'blue' is not in the prompt"):
        xyz_grid(sd1_pipe, "a red cat", x=Axis.parse("Prompt S/R: blue, green"), width=16, height=16, steps=1,
                 cfg_scale=5, seed=1)
    with pytest.raises(ValueError, match="has none"):
        xyz_grid(sd1_pipe, "a red cat", x=Axis.parse("LoRA strength: 0, 1"), width=16, height=16, steps=1,
                 cfg_scale=5, seed=1)


def test_xyz_grid_strength_by_file(sd1_pipe, tmp_path):
    parts = {"unet": sd1_pipe.unet, "text_encoder": sd1_pipe.text_encoder}
    for i, name in enumerate(["cat-000001", "cat"]):
        write_lora(random_lora(parts, seed=10 + i), tmp_path / f"{name}.safetensors")
    seen = []
    res = xyz_grid(sd1_pipe, "a cat <lora:cat:1>", "dog", x=Axis.parse("LoRA strength: 0, 0.1"),
                   y=Axis.parse("Seed: 3-4"), z=Axis.parse("LoRA file: cat-000001, cat"), lora_dir=tmp_path,
                   on_image=lambda im, idx: seen.append(idx), width=16, height=16, steps=2, cfg_scale=5, seed=1)
    assert len(seen) == 8 and seen[0] == (0, 0, 0) and seen[-1] == (1, 1, 1)
    cells = res.cells
    px = lambda im: np.asarray(im).astype(int)  # noqa: E731
    assert (px(cells[0][0][0]) == px(cells[1][0][0])).all()  # strength 0: the file does not matter
    assert not (px(cells[0][0][1]) == px(cells[1][0][1])).all()
    assert not (px(cells[0][0][0]) == px(cells[0][1][0])).all()  # seeds differ down the rows
    info = parse_infotext(res.image.info["parameters"])
    assert info["Seed"] == "3" and info["X Type"] == "LoRA strength" and info["Z Values"] == "cat-000001, cat"
    assert info["Prompt"] == "a cat <lora:cat-000001:0:0>"
    lay = res.layouts[0]
    grid = np.asarray(res.image)
    z_top = grid.shape[0] - (lay.top + 2 * 16)
    first = grid[z_top + lay.top:z_top + lay.top + 16, lay.left:lay.left + 16]
    assert (first == px(cells[0][0][0])).all()
