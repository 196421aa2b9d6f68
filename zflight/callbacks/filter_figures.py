"""Figures of ``FilterHealth``: filter grids like the paper's Fig. 6 and spectra on an absolute axis."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from zflight.analysis.filter_views import linear_view
from zflight.analysis.filters import STATUSES, FilterReport
from zflight.analysis.images import (
    colormap,
    font,
    grid,
    hstack,
    legend,
    resize,
    title_bar,
    vstack,
    with_colorbar,
)
from zflight.analysis.spectrum import BAND_EDGES, power_spectra

STATUS_COLOURS = {
    "ok": (40, 160, 40),
    "dead": (0, 0, 0),
    "untrained": (140, 90, 210),
    "aliased": (210, 40, 40),
    "duplicate": (240, 160, 0),
}
STATUS_MEANING = {
    "ok": "ok",
    "dead": "dead (collapsed or almost never active)",
    "untrained": "untrained (kept much of its random start)",
    "aliased": "aliased (learned a pattern mostly above Nyquist)",
    "duplicate": "duplicate of an earlier filter",
}
NYQUIST_COLOUR = (0, 220, 255)
BAND_COLOUR = (255, 255, 255)
FRAME = 3


def filter_tiles(weight: torch.Tensor, status: torch.Tensor, tile: int = 64) -> list[np.ndarray]:
    """One tile per filter, each contrast-normalised on its own (its min black, its max white) and
    enlarged to at least ``tile`` pixels, framed in its status colour. RGB for 3 input channels
    (pass a deeper layer's ``linear_view``), otherwise the input channel with the most energy, in
    gray; an all-zero filter is flat gray."""
    w = weight.detach().float().cpu()
    if w.shape[1] != 3:
        strongest = w.pow(2).sum((2, 3)).argmax(1)
        w = w[torch.arange(w.shape[0]), strongest][:, None].expand(-1, 3, -1, -1)
    factor = math.ceil(tile / max(w.shape[-2:]))
    tiles = []
    for f, s in zip(w, status.tolist()):
        lo, hi = float(f.min()), float(f.max())
        if hi - lo > 1e-12 * max(abs(lo), abs(hi), 1e-30):
            img = ((f.permute(1, 2, 0).numpy() - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8)
        else:
            img = np.full((*f.shape[-2:], 3), 128, np.uint8)
        img = resize(img, (img.shape[0] * factor, img.shape[1] * factor))
        tiles.append(_frame(img, STATUS_COLOURS[STATUSES[s]]))
    return tiles


def shown_filters(
    features: nn.Module | None, name: str, weight: torch.Tensor
) -> tuple[torch.Tensor, str | None]:
    """What a filter grid draws: a layer's weights when they act on the image's colours, else
    its filters seen in input pixels (``linear_view``) when there is a ``features`` trunk that
    holds the layer; and the sentence that says how its input channels were reduced."""
    if weight.shape[1] == 3 or not isinstance(features, nn.Sequential):
        return weight, None
    if name not in features._modules:
        return weight, None
    view = linear_view(features, name)
    return view, (
        f"Each tile: the filter seen in input pixels ({view.shape[-1]} px, its receptive field), "
        f"its {weight.shape[1]} input channels reduced through the layers below as linear maps "
        "(each channel becomes its conv1 filter, each tap spreads over its pooling window; ReLU "
        "and LRN left out): the colour pattern its response grows with most."
    )


def filter_grid(
    weight: torch.Tensor,
    report: FilterReport,
    title: str,
    ncols: int = 12,
    tile: int = 64,
    view: str | None = None,
) -> np.ndarray:
    """Every filter of a layer (``filter_tiles``), a legend of the frame colours and a title.
    ``view`` says how ``weight`` shows a deeper layer's filters (e.g. its ``linear_view``)."""
    panel = grid(filter_tiles(weight, report.status, tile), ncols)
    counts = report.counts()
    entries = [(STATUS_COLOURS[s], f"{STATUS_MEANING[s]}: {counts[s]}") for s in STATUSES]
    note = (
        "Each filter is contrast-normalised on its own (its minimum black, its maximum white), "
        "so shapes are visible whatever the filter's size; the frame colour is its status."
    )
    if view:
        note = f"{view} {note}"
    elif weight.shape[1] != 3:
        note = f"Each tile: the input channel with the most energy, in gray. {note}"
    if report.movement is not None:
        note += (
            f" Untrained: moved (1 - cos^2 to its start) under {report.untrained_below:.3g} (this "
            f"layer's floor, or a third of its live filters' median movement "
            f"{float(report.movement[~report.dead].median()) if bool((~report.dead).any()) else 0:.3g});"
            " median cosine to the start "
            f"{float(report.cos_start.median()):.2f}."
        )
    return title_bar(vstack([panel, legend(entries, panel.shape[1])]), title, note)


def spectra_figure(
    weight: torch.Tensor,
    stride: int,
    step: float,
    title: str,
    ncols: int = 12,
    n_fft: int = 32,
    factor: int = 2,
    range_db: float | None = None,
) -> np.ndarray:
    """Each filter's power spectrum (DC centred) in dB below its own peak, on the absolute axis:
    every tile spans +-1/(2 * step) cycles per input pixel on both axes. Cyan: the Nyquist square
    of the layer's stride; white rings: the band edges. A key panel labels the axis (the mean of
    the normalised spectra); the colour bar gives dB, over ``range_db`` below the peak (None:
    fitted to the data, ``fitted_range_db``)."""
    power = torch.fft.fftshift(power_spectra(weight, n_fft), dim=(-2, -1)).cpu().double()
    norm = power / power.flatten(1).amax(1).clamp_min(1e-300)[:, None, None]
    if range_db is None:
        range_db = fitted_range_db(norm)
    overlay = _overlay_mask(n_fft, factor, stride, step)
    tiles = [_spectrum_tile(p, factor, range_db, overlay) for p in norm]
    mosaic = with_colorbar(grid(tiles, ncols), -range_db, 0.0, "magma", "dB below peak")
    key_factor = max(factor, 192 // n_fft)
    key = _spectrum_tile(
        norm.mean(0) / norm.mean(0).max(),
        key_factor,
        range_db,
        _overlay_mask(n_fft, key_factor, stride, step),
    )
    key = _axes(key, 0.5 / step, "mean of the filters")
    nyq = 1 / (2 * stride * step)
    note = (
        f"Axes: cycles per input pixel, the same axis for every layer (this layer's taps are "
        f"{step:g} px apart, so it spans +-{0.5 / step:.3g}). Cyan square: Nyquist of stride "
        f"{stride}, |f| <= {nyq:.3g} cycles/px. White rings: bands low < {BAND_EDGES[0]:.3g} <= "
        f"mid < {BAND_EDGES[1]:.3g} <= high. Each tile is in dB below its own peak."
    )
    return title_bar(hstack([mosaic, key], pad=12), title, note)


def fitted_range_db(norm: torch.Tensor, low: float = 0.01) -> float:
    """The colour bar's depth for spectra normalised to their peaks: how far below the peak the
    data reach (their ``low`` quantile in dB, so that a few deep notches do not stretch it),
    rounded up to 5 dB, between 10 and 60 dB."""
    db = 10 * torch.log10(norm.flatten().float().clamp_min(1e-30))
    depth = -float(torch.quantile(db, low))
    return float(min(60.0, max(10.0, 5.0 * math.ceil(depth / 5.0 - 1e-9))))


def _frame(img: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    out = np.empty((img.shape[0] + 2 * FRAME, img.shape[1] + 2 * FRAME, 3), np.uint8)
    out[:] = colour
    out[FRAME:-FRAME, FRAME:-FRAME] = img
    return out


def _overlay_mask(n_fft: int, factor: int, stride: int, step: float) -> np.ndarray:
    """(side, side) int8: 1 on the Nyquist square, 2 on the band rings (where drawn), else 0."""
    side = n_fft * factor
    centre = (np.arange(side) + 0.5) / factor - 0.5  # bin units of each pixel's centre
    freq = (centre - n_fft // 2) / n_fft / step  # cycles per input pixel
    fy, fx = np.meshgrid(freq, freq, indexing="ij")
    out = np.zeros((side, side), np.int8)
    pixel = 1 / (n_fft * factor * step)
    radial = np.sqrt(fy**2 + fx**2)
    for edge in BAND_EDGES:
        ring = np.abs(radial - edge) < pixel / 2
        ring &= (np.add.outer(np.arange(side), np.arange(side)) // 2) % 2 == 0  # dotted
        out[ring] = 2
    if stride > 1:
        half = n_fft // (2 * stride)
        lo, hi = (n_fft // 2 - half) * factor, (n_fft // 2 + half + 1) * factor - 1
        out[[lo, hi], lo : hi + 1] = 1
        out[lo : hi + 1, [lo, hi]] = 1
    return out


def _spectrum_tile(
    power: torch.Tensor, factor: int, range_db: float, overlay: np.ndarray
) -> np.ndarray:
    db = (10 * torch.log10(power.clamp_min(1e-30))).float()
    img = resize(colormap(db, "magma", -range_db, 0.0), (power.shape[0] * factor,) * 2).copy()
    img[overlay == 2] = BAND_COLOUR
    img[overlay == 1] = NYQUIST_COLOUR
    return img


def _axes(img: np.ndarray, extent: float, label: str) -> np.ndarray:
    """``img`` spanning [-extent, extent] on both axes, with ticks and labels drawn around it."""
    left, bottom, top, right = 54, 34, 16, 28
    h, w = img.shape[:2]
    canvas = Image.new("RGB", (w + left + right, h + top + bottom), (255, 255, 255))
    canvas.paste(Image.fromarray(img), (left, top))
    draw = ImageDraw.Draw(canvas)
    small = font(10)
    draw.text((left, 1), label, fill=(0, 0, 0), font=small)
    for v in (-extent, -extent / 2, 0.0, extent / 2, extent):
        x = left + (v + extent) / (2 * extent) * (w - 1)
        y = top + (v + extent) / (2 * extent) * (h - 1)
        text = f"{v:.3g}"
        draw.line((x, top + h, x, top + h + 4), fill=(0, 0, 0))
        draw.text((x - 3 * len(text), top + h + 5), text, fill=(0, 0, 0), font=small)
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.text((2, y - 6), text, fill=(0, 0, 0), font=small)
    draw.text((left, top + h + 19), "fx, fy (cycles per input pixel)", fill=(0, 0, 0), font=small)
    return np.asarray(canvas)
