"""Turning tensors into pictures: the pieces every figure shares (title bar, colour bar, legend,
captions, marked tiles, number formatting) on top of ``zflight.analysis.pixels`` (uint8 arrays,
contrast, colour maps, overlays, grids), whose names are importable from here too.

Every figure a callback returns is built from these, so all panels share one look.
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from zflight.analysis.pixels import (
    Array,
    add_border,
    colormap,
    contrast,
    denormalize,
    grid,
    hstack,
    overlay,
    resize,
    symmetric_to_uint8,
    to_uint8,
    vstack,
)

__all__ = [
    "SILENT_GRAY",
    "Array",
    "add_border",
    "caption",
    "class_colours",
    "colorbar",
    "colormap",
    "contrast",
    "denormalize",
    "flag",
    "fmt",
    "fmt_percent",
    "fmt_range",
    "font",
    "grid",
    "hstack",
    "legend",
    "marked_tile",
    "overlay",
    "resize",
    "symmetric_to_uint8",
    "text_tile",
    "text_width",
    "title_bar",
    "to_uint8",
    "vstack",
    "with_colorbar",
]


@functools.lru_cache(maxsize=8)
def font(size: int = 11, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at ``size`` pixels; PIL's bitmap font without it."""
    try:
        from matplotlib import font_manager

        path = font_manager.findfont("DejaVu Sans:bold" if bold else "DejaVu Sans")
        return ImageFont.truetype(path, size)
    except Exception:
        return ImageFont.load_default()


def text_width(text: str, size: int = 11, bold: bool = False) -> int:
    """Width in pixels of ``text`` drawn with ``font(size, bold)``."""
    return math.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font(size, bold)))


def fmt(x: float, digits: int = 3) -> str:
    """A number for a figure: ``digits`` significant digits, no exponent between 1e-3 and 1e5."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    if 1e-3 <= abs(x) < 10**digits:
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
        text = f"{x:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    if 1e-3 <= abs(x) < 1e5:
        return str(round(x))
    return f"{x:.{digits - 1}e}"


def fmt_range(lo: float, hi: float) -> str:
    """``"0.0491 to 1.74"``: a range whose ends cannot run together with a minus sign."""
    return f"{fmt(lo)} to {fmt(hi)}"


def fmt_percent(p: float) -> str:
    """A share in [0, 1] as ``"90.6%"``."""
    return f"{100 * float(p):.1f}%"


def caption(
    img: Array,
    text: str,
    height: int = 14,
    background: int = 255,
    colour: Sequence[int] = (0, 0, 0),
    bold: bool = False,
) -> Array:
    """Add a strip of text above an image (widens the image if the text needs it)."""
    size = max(8, height - 3)
    width = max(img.shape[1], text_width(text, size, bold) + 4)
    canvas = Image.new("RGB", (width, img.shape[0] + height), (background,) * 3)
    canvas.paste(Image.fromarray(img), (0, height))
    ImageDraw.Draw(canvas).text(
        (2, 1), text, fill=tuple(int(c) for c in colour), font=font(size, bold)
    )
    return np.asarray(canvas)


def title_bar(img: Array, title: str, note: str = "", size: int = 15) -> Array:
    """A bold title and an optional note (wrapped to the image width) above a finished figure."""
    width = max(img.shape[1], text_width(title, size, True) + 8)
    note_size = max(9, size - 4)
    chars = max(20, int(width / (0.56 * note_size)))
    lines = [line for par in note.split("\n") for line in textwrap.wrap(par, chars)] if note else []
    height = size + 8 + len(lines) * (note_size + 3)
    canvas = Image.new("RGB", (width, img.shape[0] + height), (255, 255, 255))
    canvas.paste(Image.fromarray(img), (0, height))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), title, fill=(0, 0, 0), font=font(size, True))
    for k, line in enumerate(lines):
        y = size + 6 + k * (note_size + 3)
        draw.text((4, y), line, fill=(60, 60, 60), font=font(note_size))
    return np.asarray(canvas)


def colorbar(
    lo: float, hi: float, height: int, name: str = "inferno", label: str = "", width: int = 12
) -> Array:
    """A vertical colour bar ``height`` pixels tall: its top row is the colour of ``hi``, its bottom
    row the colour of ``lo`` (as ``colormap`` draws them); values and ``label`` on the right."""
    height = max(height, 40)
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(width, 1)
    bar = colormap(ramp, name, 0.0, 1.0)
    size = 10
    texts = [fmt(hi), label, fmt(lo)]
    canvas = Image.new(
        "RGB", (width + 6 + max(text_width(t, size) for t in texts), height), (255, 255, 255)
    )
    canvas.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for text, y in zip(texts, (0, (height - size) // 2, height - size - 3)):
        draw.text((width + 4, y), text, fill=(0, 0, 0), font=font(size))
    return np.asarray(canvas)


def with_colorbar(img: Array, lo: float, hi: float, name: str, label: str = "") -> Array:
    """``img`` with a colour bar of its height (values ``lo``..``hi`` through ``name``) on its right."""
    return hstack([img, colorbar(lo, hi, img.shape[0], name, label)], pad=3)


def legend(entries: Sequence[tuple[Sequence[int], str]], width: int, row: int = 14) -> Array:
    """Colour swatches with names, one per row, on white, at least ``width`` pixels wide."""
    size = row - 3
    width = max([width] + [text_width(t, size) + 20 for _, t in entries])
    canvas = Image.new("RGB", (width, row * len(entries) + 2), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (colour, text) in enumerate(entries):
        y = 1 + k * row
        draw.rectangle(
            (2, y + 1, 12, y + row - 2), fill=tuple(int(v) for v in colour), outline=(0, 0, 0)
        )
        draw.text((16, y), text, fill=(0, 0, 0), font=font(size))
    return np.asarray(canvas)


def class_colours(count: int) -> list[tuple[int, int, int]]:
    """Distinct colours for class indices 0..count-1 (matplotlib's tab10, or tab20 repeating)."""
    from matplotlib import colormaps

    table = colormaps["tab10" if count <= 10 else "tab20"].colors
    return [tuple(int(255 * v + 0.5) for v in table[i % len(table)]) for i in range(count)]


SILENT_GRAY = 200


def marked_tile(size: tuple[int, int], text: str = "silent") -> Array:
    """A light gray tile hatched with diagonal lines and labelled ``text``: a slot with no content
    (a silent feature, an image that never excites it), never mistaken for a flat projection."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    tile = np.full((h, w, 3), SILENT_GRAY, np.uint8)
    tile[(xx + yy) % 8 == 0] = 150
    canvas = Image.fromarray(tile)
    s = max(8, min(12, w // 5))
    tw = text_width(text, s)
    x0, y0 = max(0, (w - tw) // 2), max(0, (h - s) // 2 - 1)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x0 - 2, y0 - 1, x0 + tw + 1, y0 + s + 2), fill=(255, 255, 255))
    draw.text((x0, y0), text, fill=(90, 90, 90), font=font(s))
    return np.asarray(canvas)


def text_tile(text: str, size: tuple[int, int], font_size: int = 11) -> Array:
    """White (height, width) tile with ``text`` centred: row and column labels of a grid."""
    h, w = size
    canvas = Image.new("RGB", (max(w, text_width(text, font_size) + 4), h), (255, 255, 255))
    x = (canvas.width - text_width(text, font_size)) // 2
    ImageDraw.Draw(canvas).text(
        (x, (h - font_size) // 2 - 1), text, fill=(0, 0, 0), font=font(font_size)
    )
    return np.asarray(canvas)


def flag(img: Array, text: str, colour: Sequence[int] = (210, 30, 30), width: int = 3) -> Array:
    """A tile framed in ``colour`` with ``text`` above it in the same colour (e.g. "not reached")."""
    return caption(add_border(img, colour, width), text, colour=colour, bold=True)
