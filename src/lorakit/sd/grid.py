"""Image grids with labels in white margins (A1111 ``images.draw_grid_annotations`` layout), readable at
any cell size.

``contact_sheet``: rows of images; column labels in a top margin, row labels in a left margin.
``side_by_side``: the X/Y/Z plot's sub-grids (one per Z value) next to each other under their titles.

Labels start at A1111's font size ``(w + h) // 25`` of a cell and shrink (down to ``MIN_FONT``) until
they fit; they wrap at spaces, and inside a word that is wider than its box. Where cells are too small
for a label, the margin (left) or the column (top) widens instead of letting text run under an image;
what still does not fit is cut at the end ("…"), so a long prompt keeps its first words. Images of
other sizes keep their own size, centred in a cell as large as the largest image (letterboxed).
"""

from __future__ import annotations

from dataclasses import dataclass

WHITE, BLACK = (255, 255, 255), (0, 0, 0)
MIN_FONT = 10  # pixels: the smallest label text drawn
COL_LINES = 3  # a column label wraps to at most this many lines
WIDE = 12  # a label box may widen to about this many characters


@dataclass
class Layout:
    """Where things are: cell (row, col) is the box at (left + col*cell_w, top + row*cell_h)."""

    left: int
    top: int
    cell_w: int
    cell_h: int

    def position(self, row: int, col: int, size: tuple[int, int]) -> tuple[int, int]:
        """Top-left corner of an image of ``size`` in cell (row, col): centred in the box."""
        return (self.left + col * self.cell_w + (self.cell_w - size[0]) // 2,
                self.top + row * self.cell_h + (self.cell_h - size[1]) // 2)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(MIN_FONT, size))
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _line_height(font) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent


def _width(font, text: str) -> float:
    return font.getlength(text)


def _wrap(font, text: str, width: float) -> list[str]:
    """Lines of ``text`` at most ``width`` wide: break at spaces, and inside words that are too wide."""
    lines: list[str] = []
    for para in str(text).split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if _width(font, cand) <= width:
                line = cand
                continue
            if line:
                lines.append(line)
            while _width(font, word) > width and len(word) > 1:  # hard-wrap a word wider than the box
                cut = 1
                while cut < len(word) and _width(font, word[:cut + 1]) <= width:
                    cut += 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _cut(font, lines: list[str], max_lines: int, width: float) -> list[str]:
    """The first ``max_lines`` lines, the last ending in "…" when text was left out."""
    if len(lines) <= max_lines:
        return lines
    kept = lines[:max(1, max_lines)]
    last = kept[-1]
    while last and _width(font, last + "…") > width:
        last = last[:-1]
    return kept[:-1] + [last.rstrip() + "…"]


def _fit(texts: list[str], size: int, box_w, max_lines):
    """(font, wrapped lines per text, box width): the largest font from ``size`` down to MIN_FONT at which
    every text fits; ``box_w(font)`` gives the box width, ``max_lines(font)`` the lines allowed."""
    for s in range(max(size, MIN_FONT), MIN_FONT - 1, -1):
        font = _font(s)
        width = box_w(font)
        wrapped = [_wrap(font, t, width) for t in texts]
        if all(len(lines) <= max_lines(font) for lines in wrapped) or s == MIN_FONT:
            return font, [_cut(font, lines, max_lines(font), width) for lines in wrapped], width
    raise AssertionError("unreachable")


def _text_block(draw, lines, font, box, spacing):
    """Draw ``lines`` centred in box (x0, y0, x1, y1); from its top edge if they are taller than the box."""
    x0, y0, x1, y1 = box
    height = _line_height(font)
    total = height * len(lines) + spacing * (len(lines) - 1)
    y = y0 + max(0, (y1 - y0 - total) // 2)
    for line in lines:
        draw.text((x0 + (x1 - x0 - _width(font, line)) / 2, y), line, fill=BLACK, font=font)
        y += height + spacing


def contact_sheet(rows, row_labels=None, col_labels=None, *, layout_out: list | None = None):
    """One image of ``rows`` (list of rows of PIL images, any sizes) with labels in the margins.

    ``row_labels``/``col_labels`` may be None or empty to leave that margin out. Append a
    :class:`Layout` to ``layout_out`` to learn where the cells landed.
    """
    from PIL import Image, ImageDraw

    if not rows or not rows[0]:
        raise ValueError("contact_sheet needs at least one row with one image.")
    n_cols = len(rows[0])
    if any(len(r) != n_cols for r in rows):
        raise ValueError(f"every row needs {n_cols} images; got row lengths {[len(r) for r in rows]}.")
    for labels, n, what in ((row_labels, len(rows), "row_labels"), (col_labels, n_cols, "col_labels")):
        if labels and len(labels) != n:
            raise ValueError(f"{what} has {len(labels)} labels for {n} {what[:3]}s.")
    w, h = max(im.width for r in rows for im in r), max(im.height for r in rows for im in r)
    size = (w + h) // 25
    pad = max(2, size // 4)
    cell_w, top, left = w, 0, 0
    if col_labels:  # a column widens rather than letting its label run into the next one
        widest = max(_width(_font(MIN_FONT), word) for t in col_labels for word in str(t).split())
        cell_w = max(w, int(min(widest, WIDE * MIN_FONT)) + 2 * pad)
        col_font, col_lines, _ = _fit([str(t) for t in col_labels], size, lambda f: cell_w - 2 * pad,
                                      lambda f: COL_LINES)
        used = max(len(lines) for lines in col_lines)
        top = used * _line_height(col_font) + (used - 1) * pad + 2 * pad
    if row_labels:
        def row_width(font):  # 3/4 of a cell as A1111, wider for long labels (up to the cell or WIDE chars)
            widest = max(_width(font, str(t)) for t in row_labels)
            return max(w * 3 // 4, min(widest, max(w, WIDE * font.size))) if hasattr(font, "size") else w

        def row_lines(font):
            return max(1, (h - 2 * pad + pad) // (_line_height(font) + pad))

        row_font, row_text, inner = _fit([str(t) for t in row_labels], size, row_width, row_lines)
        left = int(inner) + 2 * pad
    sheet = Image.new("RGB", (left + n_cols * cell_w, top + len(rows) * h), WHITE)
    draw = ImageDraw.Draw(sheet)
    if col_labels:
        for c, lines in enumerate(col_lines):
            _text_block(draw, lines, col_font, (left + c * cell_w + pad, pad, left + (c + 1) * cell_w - pad,
                                                top - pad), pad)
    if row_labels:
        for r, lines in enumerate(row_text):
            _text_block(draw, lines, row_font, (pad, top + r * h + pad, left - pad, top + (r + 1) * h - pad), pad)
    layout = Layout(left, top, cell_w, h)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            sheet.paste(im.convert("RGB"), layout.position(r, c, im.size))
    if layout_out is not None:
        layout_out.append(layout)
    return sheet


def side_by_side(grids, titles=None, *, gap: int | None = None):
    """Sub-grids next to each other (bottoms padded white), each under its title; one grid -> itself."""
    from PIL import Image, ImageDraw

    if len(grids) == 1 and not titles:
        return grids[0]
    gap = grids[0].width // 20 if gap is None else gap
    size = (grids[0].width // 4 + grids[0].height // 4) // 25
    pad = max(2, size // 4)
    lines = []
    if titles:
        narrowest = min(g.width for g in grids) - 2 * pad
        font, lines, _ = _fit([str(t) for t in titles], size, lambda f: narrowest, lambda f: COL_LINES)
    top = max(len(t) for t in lines) * (_line_height(font) + pad) + pad if titles else 0
    width = sum(g.width for g in grids) + gap * (len(grids) - 1)
    out = Image.new("RGB", (width, top + max(g.height for g in grids)), WHITE)
    draw = ImageDraw.Draw(out)
    xs = [sum(g.width + gap for g in grids[:i]) for i in range(len(grids))]
    for x, g, title in zip(xs, grids, lines or [None] * len(grids), strict=True):
        if title:
            _text_block(draw, title, font, (x, pad, x + g.width, top), pad)
        out.paste(g, (x, top))
    return out
