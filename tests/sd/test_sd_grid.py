"""Grids: cells land where the layout says, labels are drawn in white margins (pixel checks), A1111 axis
ranges, Prompt S/R rules, and a real X/Y/Z run on a tiny pipeline with a LoRA strength x file sweep."""

import numpy as np
import pytest
from PIL import Image
from sd_models import random_lora
from sd_pipes import clean_parts

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
    assert lay.left >= 30 and lay.top > 0 and lay.cell_w >= 40 and lay.cell_h == 30
    assert sheet.shape == (lay.top + 60, lay.left + 3 * lay.cell_w, 3)
    for r, row in enumerate(colors):
        for c, color in enumerate(row):
            x, y = lay.position(r, c, (40, 30))
            assert (sheet[y:y + 30, x:x + 40] == color).all()
    top, left = sheet[:lay.top, lay.left:], sheet[lay.top:, :lay.left]
    for margin, n, axis in ((top, 3, 1), (left, 2, 0)):  # every label slot has ink, the rest is white
        assert set(np.unique(margin)) - {255} and (margin.min(axis=2) > 128).mean() > 0.7
        size = margin.shape[axis] // n
        for i in range(n):
            part = margin[:, i * size:(i + 1) * size] if axis == 1 else margin[i * size:(i + 1) * size]
            assert (part < 128).any(), f"label {i} missing"
    bare = contact_sheet(rows)
    assert bare.size == (120, 60)


def _label_area(sheet, lay, row):
    return np.asarray(sheet)[lay.top + row * lay.cell_h:lay.top + (row + 1) * lay.cell_h, :lay.left]


@pytest.mark.parametrize("cell", [32, 64, 512])
def test_row_labels_of_a_file_sweep_can_be_told_apart(cell):
    """Before: "LoRA file: heart-000004" wrapped at the space and its second line ran under the images, so
    every row read "LoRA file: heart-0"."""
    names = ["heart-000004", "heart-000008", "heart-000012"]
    rows = [[_tile((0, 0, 0), (cell, cell))] * 2 for _ in names]
    layouts = []
    sheet = contact_sheet(rows, [f"LoRA file: {n}" for n in names], ["LoRA strength: 0", "LoRA strength: 1"],
                          layout_out=layouts)
    lay = layouts[0]
    areas = [_label_area(sheet, lay, r) for r in range(3)]
    assert not (areas[0] == areas[1]).all() and not (areas[1] == areas[2]).all()
    for area in areas:  # each label ends inside the margin (none runs under the images)
        assert (area < 128).any() and (area[:, -2:] == 255).all()
    top = np.asarray(sheet)[:lay.top, lay.left:]
    for c in range(2):  # each column label stays inside its own column
        part = top[:, c * lay.cell_w:(c + 1) * lay.cell_w]
        assert (part < 128).any() and (part[:, :1] == 255).all() and (part[:, -1:] == 255).all()


def test_long_labels_keep_their_first_words_inside_their_row():
    """Before: a prompt taller than its row was centred, so its first lines landed above the row (cut off or
    drawn over the previous label)."""
    from lorakit.sd.grid import _cut, _font, _wrap

    prompt = "sks dog, " + ", ".join(f"detail {i}" for i in range(60))
    rows = [[_tile((0, 0, 0), (32, 32))], [_tile((0, 0, 0), (32, 32))], [_tile((0, 0, 0), (32, 32))]]
    layouts = []
    sheet = contact_sheet(rows, ["", prompt, ""], layout_out=layouts)
    lay = layouts[0]
    assert sheet.size[1] == 96  # no row grew
    assert (_label_area(sheet, lay, 0) == 255).all() and (_label_area(sheet, lay, 2) == 255).all()  # no spill
    assert (_label_area(sheet, lay, 1) < 128).any()
    font = _font(10)
    lines = _cut(font, _wrap(font, prompt, 100), 2, 100)
    assert lines[0].startswith("sks dog,") and lines[-1].endswith("…") and len(lines) == 2


def test_images_of_other_sizes_keep_their_own_size():
    """Before: the training contact sheet resized every sample to the first prompt's size (squashed)."""
    tall, wide, square = _tile((255, 0, 0), (20, 40)), _tile((0, 0, 255), (40, 20)), _tile((0, 255, 0), (30, 30))
    layouts = []
    sheet = np.asarray(contact_sheet([[tall, wide], [square, tall]], ["p1", "p2"], ["e1", "e2"], layout_out=layouts))
    lay = layouts[0]
    assert lay.cell_h == 40 and lay.cell_w >= 40
    for r, c, im in ((0, 0, tall), (0, 1, wide), (1, 0, square), (1, 1, tall)):
        x, y = lay.position(r, c, im.size)
        assert (sheet[y:y + im.height, x:x + im.width] == np.asarray(im)).all()
        box = sheet[lay.top + r * 40:lay.top + (r + 1) * 40, lay.left + c * lay.cell_w:lay.left + (c + 1) * lay.cell_w]
        assert (box == 255).all(axis=2).sum() == box.shape[0] * box.shape[1] - im.width * im.height  # white around


def test_contact_sheet_errors():
    with pytest.raises(ValueError, match="col_labels has 1 labels for 2"):
        contact_sheet([[_tile((0, 0, 0)), _tile((0, 0, 0))]], None, ["x"])
    with pytest.raises(ValueError, match="every row needs 2 images"):
        contact_sheet([[_tile((0, 0, 0)), _tile((0, 0, 0))], [_tile((0, 0, 0))]])


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
    for bad in ("nan", "inf"):
        with pytest.raises(ValueError, match=f"axis value '{bad}' is not a finite number"):
            Axis.parse(f"CFG Scale: 5, {bad}")


def test_lora_file_labels_carry_the_files_epoch(tmp_path):
    from lorakit.sd.loras import LoraIndex

    for epoch, name in ((4, "heart-000004"), (None, "heart")):
        lf = random_lora(clean_parts("sd1"), seed=1)
        if epoch:
            lf.metadata["ss_epoch"] = str(epoch)
        write_lora(lf, tmp_path / f"{name}.safetensors")
    axis, index = Axis.parse("LoRA file: heart-000004, heart"), LoraIndex(tmp_path)
    assert [axis.label(v, index) for v in axis.values] == ["LoRA file: heart-000004 (epoch 4)", "LoRA file: heart"]


def test_sr_string_must_be_in_the_prompt(sd1_pipe):
    with pytest.raises(ValueError, match="'blue' is not in the prompt"):
        xyz_grid(sd1_pipe, "a red cat", x=Axis.parse("Prompt S/R: blue, green"), width=32, height=32, steps=1,
                 cfg_scale=5, seed=1)
    with pytest.raises(ValueError, match="has none"):
        xyz_grid(sd1_pipe, "a red cat", x=Axis.parse("LoRA strength: 0, 1"), width=32, height=32, steps=1,
                 cfg_scale=5, seed=1)


def test_xyz_grid_strength_by_file(sd1_pipe, tmp_path):
    parts = clean_parts("sd1")
    for i, name in enumerate(["cat-000001", "cat"]):
        write_lora(random_lora(parts, seed=10 + i), tmp_path / f"{name}.safetensors")
    seen = []
    res = xyz_grid(sd1_pipe, "a cat <lora:cat:1>", "dog", x=Axis.parse("LoRA strength: 0, 0.1"),
                   y=Axis.parse("Seed: 3-4"), z=Axis.parse("LoRA file: cat-000001, cat"), lora_dir=tmp_path,
                   on_image=lambda im, idx: seen.append(idx), width=32, height=32, steps=2, cfg_scale=5, seed=1)
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
    z_top = grid.shape[0] - (lay.top + 2 * 32)
    x0, y0 = lay.position(0, 0, (32, 32))
    assert (grid[z_top + y0:z_top + y0 + 32, x0:x0 + 32] == px(cells[0][0][0])).all()
