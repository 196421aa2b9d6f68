"""Does an attribution map point at the object? Scores shared by occlusion and heat-map analyses."""

from __future__ import annotations

import torch


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether each map's maximum lies inside its object mask.

    ``maps`` (N, H, W) are evidence maps at image resolution (larger = more important);
    ``masks`` (N, H, W) are boolean object masks. Ties go to the first maximum in raster order.
    """
    _check(maps, masks)
    flat = maps.flatten(1).argmax(dim=1)
    return masks.flatten(1).bool().gather(1, flat[:, None]).squeeze(1)


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
