"""Gridding of layer-2 deconvnet projections (Zeiler & Fergus, Fig. 6(d) vs 6(e)).

A first layer of stride s places copies of its filters on an s-pixel grid, so projections of
layer-2 units repeat every (cumulative stride below layer 2) pixels when the filters carry energy
at that period. The measure: each projection cropped to its unit's receptive field (the rest of
the image is zero and would dilute it), then the peak-to-neighbour power ratio at the harmonics of
that period, to be compared with the same network at its random start.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from zflight.analysis.deconvnet import Deconvnet, receptive_field


def crop_windows(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int, period: int
) -> list[torch.Tensor]:
    """Each image (N, C, H, W) cropped to its window [top, top+size) x [left, left+size) clipped to
    the image, then trimmed to whole periods; windows under two periods on a side are dropped."""
    crops = []
    h, w = images.shape[-2:]
    for img, t, lft in zip(images, top.tolist(), left.tolist()):
        y0, y1 = max(0, t), min(h, t + size)
        x0, x1 = max(0, lft), min(w, lft + size)
        ny, nx = (y1 - y0) // period, (x1 - x0) // period
        if ny >= 2 and nx >= 2:
            crops.append(img[..., y0 : y0 + ny * period, x0 : x0 + nx * period])
    return crops


def gridding_ratio(image: torch.Tensor, period: int) -> float:
    """Peak-to-neighbour power ratio at the harmonics (k/p, l/p) != 0 of period ``p`` in a (C, h, w)
    image whose sides are whole periods: total power at the harmonics over the total of each
    harmonic's mean power in its 8 neighbouring bins (DC excluded). A smooth or noisy image scores
    about 1; a pattern repeating every ``p`` pixels scores far above 1. NaN for a constant image.
    """
    x = image.detach().double()
    x = x[None] if x.dim() == 2 else x
    h, w = x.shape[-2:]
    if h % period or w % period or h < 2 * period or w < 2 * period:
        raise ValueError(f"sides {h}x{w} must be whole periods of {period}, at least two")
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).sum(0)
    if float(power.sum()) <= 0:
        return math.nan
    power[0, 0] = float("nan")  # DC: never a neighbour
    ks = torch.arange(period)
    ii = (ks * (h // period))[:, None].expand(period, period).flatten()[1:]
    jj = (ks * (w // period))[None, :].expand(period, period).flatten()[1:]
    ring = torch.stack([power[(ii + a) % h, (jj + b) % w] for a, b in _RING], dim=1)
    peak, neighbours = float(power[ii, jj].sum()), float(torch.nanmean(ring, dim=1).sum())
    return peak / neighbours if neighbours > 0 else math.inf


_RING = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)]


def gridding_of(
    trunk: nn.Sequential, layer: str, images: torch.Tensor, channels: int, period: int
) -> tuple[float, list[torch.Tensor]]:
    """Median gridding ratio of the projections of each image's strongest ``channels`` of ``layer``
    (each at its strongest position), cropped to that unit's receptive field; NaN if none fits."""
    size, rf_stride, offset = receptive_field(trunk, layer)
    acts = trunk(images.to(next(trunk.parameters()).dtype))
    k = min(channels, acts.shape[1])
    chosen = acts.flatten(2).amax(2).topk(k, dim=1).indices.flatten()
    rows = torch.arange(images.shape[0]).repeat_interleave(k)
    positions = acts.flatten(2)[rows, chosen].argmax(1)
    projections = Deconvnet(trunk).project(images[rows], layer, chosen, positions)
    w = acts.shape[-1]
    top, left = offset + (positions // w) * rf_stride, offset + (positions % w) * rf_stride
    crops = crop_windows(projections.float().cpu(), top.cpu(), left.cpu(), size, period)
    ratios = [r for r in (gridding_ratio(c, period) for c in crops) if not math.isnan(r)]
    return (float(np.median(ratios)) if ratios else math.nan), crops
