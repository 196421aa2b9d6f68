"""Tensors to pixels: uint8 HxWx3 arrays, contrast, colour maps, overlays, borders, and laying out
tiles. ``zflight.analysis.images`` adds the text and figure pieces on top of these."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

Array = np.ndarray


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo per-channel normalisation of (N, 3, H, W) or (3, H, W) images; clamp to [0, 1]."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images * s + m).clamp(0, 1)


def to_uint8(x: torch.Tensor | Array, lo: float | None = None, hi: float | None = None) -> Array:
    """(3, H, W) / (H, W) / (H, W, 3) values -> uint8 (H, W, 3), scaled from [lo, hi] (default: min/max)."""
    a = (
        x.detach().float().cpu().numpy()
        if isinstance(x, torch.Tensor)
        else np.asarray(x, np.float32)
    )
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    lo = float(a.min()) if lo is None else lo
    hi = float(a.max()) if hi is None else hi
    scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return (np.clip(scaled, 0, 1) * 255 + 0.5).astype(np.uint8)


def contrast(x: torch.Tensor | Array, clip: float = 0.005) -> Array:
    """One picture (a deconvnet projection) contrast-normalised on its own, as the paper shows
    them: its values from the ``clip`` to the ``1 - clip`` quantile (over all channels) span 0 to
    255, so a few extreme pixels do not leave the rest gray; the minimum maps to 0 and the
    maximum to 255."""
    a = (
        x.detach().float().cpu().numpy()
        if isinstance(x, torch.Tensor)
        else np.asarray(x, np.float32)
    )
    lo, hi = np.quantile(a, [clip, 1 - clip]) if clip > 0 else (a.min(), a.max())
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    return to_uint8(a, float(lo), float(hi))


def symmetric_to_uint8(x: torch.Tensor | Array) -> Array:
    """Signed data (filters, projections) on a scale centred at zero, so 0 is mid-gray."""
    a = (
        x.detach().float().cpu().numpy()
        if isinstance(x, torch.Tensor)
        else np.asarray(x, np.float32)
    )
    m = float(np.abs(a).max()) or 1.0
    return to_uint8(a, -m, m)


def colormap(
    values: torch.Tensor | Array,
    name: str = "inferno",
    lo: float | None = None,
    hi: float | None = None,
) -> Array:
    """(H, W) scalars -> uint8 (H, W, 3) through a matplotlib colour map."""
    from matplotlib import colormaps

    a = (
        values.detach().float().cpu().numpy()
        if isinstance(values, torch.Tensor)
        else np.asarray(values, np.float32)
    )
    lo = float(a.min()) if lo is None else lo
    hi = float(a.max()) if hi is None else hi
    scaled = np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)
    return (colormaps[name](scaled)[..., :3] * 255 + 0.5).astype(np.uint8)


def resize(img: Array, size: tuple[int, int], nearest: bool = True) -> Array:
    """Resize uint8 (H, W, 3) to (height, width)."""
    h, w = size
    if nearest and h % img.shape[0] == 0 and w % img.shape[1] == 0:  # whole-pixel blow-up
        return np.repeat(np.repeat(img, h // img.shape[0], 0), w // img.shape[1], 1)
    mode = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(img).resize((w, h), mode))


def overlay(
    image: Array,
    heat: torch.Tensor | Array,
    alpha: float = 0.5,
    name: str = "jet",
    lo: float | None = None,
    hi: float | None = None,
) -> Array:
    """Blend a heat map (any size, resized bilinearly) over a uint8 image."""
    colours = colormap(heat, name, lo, hi)
    colours = resize(colours, image.shape[:2], nearest=False)
    return (image.astype(np.float32) * (1 - alpha) + colours * alpha).astype(np.uint8)


def add_border(img: Array, colour: Sequence[int], width: int = 2) -> Array:
    """Frame an image with a coloured border of ``width`` pixels (size grows by 2*width)."""
    h, w, _ = img.shape
    out = np.empty((h + 2 * width, w + 2 * width, 3), np.uint8)
    out[:] = np.asarray(colour, np.uint8)
    out[width : width + h, width : width + w] = img
    return out


def grid(tiles: Sequence[Array], ncols: int, pad: int = 2, pad_value: int = 255) -> Array:
    """Lay out uint8 tiles row-major; tiles of different sizes are top-left aligned in equal cells."""
    if not tiles:
        raise ValueError("grid needs at least one tile")
    ncols = max(1, min(ncols, len(tiles)))
    nrows = (len(tiles) + ncols - 1) // ncols
    ch = max(t.shape[0] for t in tiles)
    cw = max(t.shape[1] for t in tiles)
    out = np.full((nrows * (ch + pad) + pad, ncols * (cw + pad) + pad, 3), pad_value, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        y, x = pad + r * (ch + pad), pad + c * (cw + pad)
        out[y : y + t.shape[0], x : x + t.shape[1]] = t
    return out


def hstack(panels: Sequence[Array], pad: int = 4, pad_value: int = 255) -> Array:
    """Place panels side by side, top-aligned, each taking its own width."""
    h = max(p.shape[0] for p in panels)
    w = sum(p.shape[1] for p in panels) + pad * (len(panels) + 1)
    out = np.full((h + 2 * pad, w, 3), pad_value, np.uint8)
    x = pad
    for p in panels:
        out[pad : pad + p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + pad
    return out


def vstack(panels: Sequence[Array], pad: int = 4, pad_value: int = 255) -> Array:
    """Place panels one above the other, left-aligned, each taking its own height."""
    w = max(p.shape[1] for p in panels)
    h = sum(p.shape[0] for p in panels) + pad * (len(panels) + 1)
    out = np.full((h, w + 2 * pad, 3), pad_value, np.uint8)
    y = pad
    for p in panels:
        out[y : y + p.shape[0], pad : pad + p.shape[1]] = p
        y += p.shape[0] + pad
    return out
