"""Does an attribution map point at the object? Scores shared by occlusion and heat-map analyses."""

from __future__ import annotations

import torch


def pointing_game(
    maps: torch.Tensor, masks: torch.Tensor, tolerance: float | None = None
) -> torch.Tensor:
    """(N,) bool: whether each map's maximum lies on its object, within ``tolerance`` pixels.

    ``maps`` (N, H, W) are evidence maps at image resolution (larger = more important);
    ``masks`` (N, H, W) are boolean object masks. As in Zhang et al.'s pointing game (ECCV 2016,
    15 px at 224 px) a hit may fall up to ``tolerance`` pixels (Euclidean) outside the mask; the
    default scales their 15 px with the image width. Where several pixels share the maximum (a
    blocky map such as occlusion's with non-overlapping windows), the map points at the tied pixel
    nearest the ties' centroid, i.e. the middle of the strongest window, not its corner.
    """
    _check(maps, masks)
    if tolerance is None:
        tolerance = 15 / 224 * maps.shape[-1]
    return (
        dilate(masks.bool(), tolerance).flatten(1).gather(1, peak_pixel(maps)[:, None]).squeeze(1)
    )


def peak_pixel(maps: torch.Tensor) -> torch.Tensor:
    """(N,) flat index of each (N, H, W) map's maximum; ties go to the tied pixel nearest their
    centroid (raster order among equally near ones)."""
    flat = maps.flatten(1)
    tied = flat == flat.amax(dim=1, keepdim=True)
    w = maps.shape[-1]
    idx = torch.arange(flat.shape[1], device=maps.device)
    ys, xs = (idx // w).double(), (idx % w).double()
    count = tied.sum(1, keepdim=True).double()
    cy = (tied * ys).sum(1, keepdim=True) / count
    cx = (tied * xs).sum(1, keepdim=True) / count
    dist = torch.where(tied, (ys - cy) ** 2 + (xs - cx) ** 2, torch.inf)
    return dist.argmin(dim=1)


def dilate(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """Grow (N, H, W) boolean masks by every pixel within Euclidean distance ``radius``."""
    r = int(radius)
    if r < 1:
        return masks
    d = torch.arange(-r, r + 1, dtype=torch.float32, device=masks.device)
    disk = ((d[:, None] ** 2 + d[None, :] ** 2) <= radius**2).float()[None, None]
    grown = torch.nn.functional.conv2d(masks[:, None].float(), disk, padding=r)
    return grown[:, 0] > 0


def mass_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) share of each map's positive mass that falls inside its mask (0 where a map has none)."""
    _check(maps, masks)
    pos = maps.clamp_min(0).flatten(1).double()
    inside = (pos * masks.flatten(1).double()).sum(1)
    total = pos.sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.zeros_like(total)).float()


def _check(maps: torch.Tensor, masks: torch.Tensor) -> None:
    if maps.shape != masks.shape or maps.dim() != 3:
        raise ValueError(
            f"maps and masks must both be (N, H, W); got {tuple(maps.shape)} and {tuple(masks.shape)}"
        )
