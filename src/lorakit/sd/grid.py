"""Image grids with labels in white margins (A1111 ``images.draw_grid_annotations`` layout).

``contact_sheet``: rows of equal-size images; column labels in a top margin, row labels in a left
margin (3/4 of a cell wide), font size ``(w + h) // 25`` of a cell, long labels wrapped.
``side_by_side``: the X/Y/Z plot's sub-grids (one per Z value) next to each other under their titles.
"""

from __future__ import annotations

from dataclasses import dataclass

WHITE, BLACK = (255, 255, 255), (0, 0, 0)


@dataclass
class Layout:
    """Where things are: cell (row, col) starts at (left + col*w, top + row*h)."""

    left: int
    top: int
    cell_w: int
    cell_h: int


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(8, size))
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines = []
    for para in str(text).split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}".strip()
            if line and draw.textlength(cand, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = cand
        lines.append(line)
    return lines


def _text_block(draw, lines, font, box, spacing):
    """Draw ``lines`` centred in box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    heights = [font.getbbox(line or " ")[3] for line in lines]
    total = sum(heights) + spacing * (len(lines) - 1)
    y = y0 + (y1 - y0 - total) // 2
    for line, h in zip(lines, heights, strict=True):
        w = draw.textlength(line, font=font)
        draw.text((x0 + (x1 - x0 - w) / 2, y), line, fill=BLACK, font=font)
        y += h + spacing


def _measure(lines_per_label, font, spacing) -> int:
    return max((sum(font.getbbox(line or " ")[3] for line in lines) + spacing * (len(lines) - 1)
                for lines in lines_per_label), default=0)


def contact_sheet(rows, row_labels=None, col_labels=None, *, layout_out: list | None = None):
    """One image of ``rows`` (list of rows of equal-size PIL images) with labels in the margins.

    ``row_labels``/``col_labels`` may be None or empty to leave that margin out. Append a
    :class:`Layout` to ``layout_out`` to learn where the cells landed.
    """
    from PIL import Image, ImageDraw

    if not rows or not rows[0]:
        raise ValueError("contact_sheet needs at least one row with one image.")
    n_cols = len(rows[0])
    if any(len(r) != n_cols for r in rows):
        raise ValueError(f"every row needs {n_cols} images; got row lengths {[len(r) for r in rows]}.")
    w, h = rows[0][0].size
    if any(im.size != (w, h) for r in rows for im in r):
        raise ValueError("all images of a contact sheet must have the same size.")
    for labels, n, what in ((row_labels, len(rows), "row_labels"), (col_labels, n_cols, "col_labels")):
        if labels and len(labels) != n:
            raise ValueError(f"{what} has {len(labels)} labels for {n} {what[:3]}s.")
    font = _font((w + h) // 25)
    spacing = max(2, font.size // 4 if hasattr(font, "size") else 2)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = w * 3 // 4 if row_labels else 0
    col_lines = [_wrap(scratch, t, font, w - 2 * spacing) for t in col_labels] if col_labels else []
    row_lines = [_wrap(scratch, t, font, left - 2 * spacing) for t in row_labels] if row_labels else []
    top = _measure(col_lines, font, spacing) + 4 * spacing if col_labels else 0
    sheet = Image.new("RGB", (left + n_cols * w, top + len(rows) * h), WHITE)
    draw = ImageDraw.Draw(sheet)
    for c, lines in enumerate(col_lines):
        _text_block(draw, lines, font, (left + c * w, 0, left + (c + 1) * w, top), spacing)
    for r, lines in enumerate(row_lines):
        _text_block(draw, lines, font, (0, top + r * h, left, top + (r + 1) * h), spacing)
    for r, row in enumerate(rows):  # after the labels: a label that overflows its margin never covers a cell
        for c, im in enumerate(row):
            sheet.paste(im.convert("RGB"), (left + c * w, top + r * h))
    if layout_out is not None:
        layout_out.append(Layout(left, top, w, h))
    return sheet


def side_by_side(grids, titles=None, *, gap: int | None = None):
    """Sub-grids next to each other (bottoms padded white), each under its title; one grid -> itself."""
    from PIL import Image, ImageDraw

    if len(grids) == 1 and not titles:
        return grids[0]
    gap = grids[0].width // 20 if gap is None else gap
    font = _font((grids[0].width // 4 + grids[0].height // 4) // 25)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [_wrap(scratch, t, font, g.width) for t, g in zip(titles, grids, strict=True)] if titles else []
    spacing = 4
    top = _measure(lines, font, spacing) + 4 * spacing if titles else 0
    width = sum(g.width for g in grids) + gap * (len(grids) - 1)
    out = Image.new("RGB", (width, top + max(g.height for g in grids)), WHITE)
    draw = ImageDraw.Draw(out)
    xs = [sum(g.width + gap for g in grids[:i]) for i in range(len(grids))]
    for x, g, title in zip(xs, grids, lines or [None] * len(grids), strict=True):
        if title:
            _text_block(draw, title, font, (x, 0, x + g.width, top), spacing)
    for x, g in zip(xs, grids, strict=True):
        out.paste(g, (x, top))
    return out
