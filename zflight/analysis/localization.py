"""Does an attribution map point at the object? Scores shared by every attribution analysis, and
what trivial maps score on the same images.

A score means something only beside its baselines: the image centre (a centred Gaussian map)
and a uniform random map. The random map's scores are exact expectations, not one draw: the
maximum of i.i.d. continuous noise is equally likely at every pixel, and by symmetry each pixel
holds 1/(H W) of its mass on average, so both scores are the mask's share of the image.

No score takes floating-point rounding as evidence: a value within ``RTOL`` of the map's largest
magnitude counts as zero, and values within ``RTOL`` of the maximum tie.
"""

from __future__ import annotations

import torch

RTOL = 1e-5  # relative to a map's largest magnitude: rounding of float32 sums is far below it


def pointing_game(
    maps: torch.Tensor, masks: torch.Tensor, tolerance: float | None = None
) -> torch.Tensor:
    """(N,) bool: whether each map's maximum lies on its object, within ``tolerance`` pixels.

    ``maps`` (N, H, W) are evidence maps at image resolution (larger = more important);
    ``masks`` (N, H, W) are boolean object masks. As in Zhang et al.'s pointing game (ECCV 2016,
    15 px at 224 px) a hit may fall up to ``tolerance`` pixels (Euclidean) outside the mask; the
    default scales their 15 px with the image width. Where several pixels share the maximum (a
    blocky map such as occlusion's with non-overlapping windows), the map points at the tied pixel
    nearest the ties' centroid, i.e. the middle of the strongest window, not its corner. A map
    without positive evidence (its maximum is zero within ``RTOL``, or negative) points at
    nothing: a miss.
    """
    _check(maps, masks)
    if tolerance is None:
        tolerance = default_tolerance(maps.shape[-1])
    return pointing_hits(maps, dilate(masks, tolerance))


def pointing_hits(maps: torch.Tensor, grown: torch.Tensor) -> torch.Tensor:
    """``pointing_game`` against masks already grown by the tolerance (``dilate``)."""
    hit = grown.flatten(1).gather(1, peak_pixel(maps)[:, None]).squeeze(1)
    return hit & has_evidence(maps)


def default_tolerance(width: int) -> float:
    """Zhang et al.'s 15 px at 224 px, scaled to ``width``."""
    return 15 / 224 * width


def has_evidence(maps: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether each (N, H, W) map has a maximum above zero beyond rounding."""
    flat = maps.flatten(1).double()
    return flat.amax(1) > RTOL * flat.abs().amax(1)


def peak_pixel(maps: torch.Tensor) -> torch.Tensor:
    """(N,) flat index of each (N, H, W) map's maximum; values within ``RTOL`` (of the largest
    magnitude) of it tie, and ties go to the tied pixel nearest their centroid (raster order
    among equally near ones)."""
    flat = maps.flatten(1).double()
    top = flat.amax(dim=1, keepdim=True)
    tied = flat >= top - RTOL * flat.abs().amax(dim=1, keepdim=True)
    w = maps.shape[-1]
    idx = torch.arange(flat.shape[1], device=maps.device)
    ys, xs = (idx // w).double(), (idx % w).double()
    count = tied.sum(1, keepdim=True).double()
    cy = (tied * ys).sum(1, keepdim=True) / count
    cx = (tied * xs).sum(1, keepdim=True) / count
    dist = torch.where(tied, (ys - cy) ** 2 + (xs - cx) ** 2, torch.inf)
    return dist.argmin(dim=1)


def dilate(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """Grow (N, H, W) boolean masks by every pixel within Euclidean distance ``radius``: the union
    of the masks shifted by each offset in the disk (exact, and cheaper than a convolution)."""
    r = int(radius)
    masks = masks.bool()
    if r < 1:
        return masks
    h, w = masks.shape[-2:]
    grown = masks.clone()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius:
                ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
                xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
                grown[:, yd, xd] |= masks[:, ys, xs]
    return grown


def mass_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) share of each map's positive mass that falls inside its mask (0 where a map has none).

    Positive values within ``RTOL`` of the map's largest magnitude are rounding, not mass.
    """
    _check(maps, masks)
    flat = maps.flatten(1).double()
    floor = RTOL * flat.abs().amax(1, keepdim=True)
    pos = torch.where(flat > floor, flat, torch.zeros_like(flat))
    inside = (pos * masks.flatten(1).double()).sum(1)
    total = pos.sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.zeros_like(total)).float()


def centre_map(height: int, width: int, sigma: float | None = None) -> torch.Tensor:
    """(H, W) centred Gaussian, sigma a quarter of the shorter side by default: the trivial guess
    that the object is in the middle of the picture."""
    sigma = sigma or min(height, width) / 4
    y = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
    x = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    return torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))


def baseline_scores(
    masks: torch.Tensor, tolerance: float | None = None, grown: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """(N,) scores of the trivial maps on (N, H, W) ``masks``: ``pointing_game`` and
    ``mass_in_mask`` of the centre (``centre_*``) and the expected values for a uniform random map
    (``random_*``: the dilated mask's and the mask's share of the image). ``grown``: the masks
    already dilated by the tolerance."""
    masks = masks.bool()
    n, h, w = masks.shape
    if grown is None:
        grown = dilate(masks, default_tolerance(w) if tolerance is None else tolerance)
    centre = centre_map(h, w).to(masks.device)
    area = float(h * w)
    at_centre = grown.flatten(1)[:, int(peak_pixel(centre[None])[0])]
    return {
        "centre_pointing_game": at_centre.double(),
        "centre_mass_in_mask": mass_in_mask(centre.expand(n, h, w), masks).double(),
        "random_pointing_game": grown.flatten(1).sum(1).double() / area,
        "random_mass_in_mask": masks.flatten(1).sum(1).double() / area,
    }


SCORES = ("pointing_game", "mass_in_mask")


def scores_with_baselines(
    maps: torch.Tensor, masks: torch.Tensor, prefix: str = "", tolerance: float | None = None
) -> dict[str, float]:
    """Mean pointing game and mass in mask of ``maps`` beside both baselines on the same masks.

    Keys, for each score ``s`` (``pointing_game``, ``mass_in_mask``) after ``prefix``: ``s``;
    ``s_baseline_centre``; ``s_baseline_random``; ``s_margin``, the score minus the better
    baseline (positive: the maps beat both trivial guesses).
    """
    masks = masks.bool().to(maps.device)
    grown = dilate(masks, default_tolerance(maps.shape[-1]) if tolerance is None else tolerance)
    base = baseline_scores(masks, grown=grown)
    values = {
        "pointing_game": pointing_hits(maps, grown).double().mean().item(),
        "mass_in_mask": mass_in_mask(maps, masks).double().mean().item(),
    }
    out: dict[str, float] = {}
    for s in SCORES:
        centre = base[f"centre_{s}"].mean().item()
        random = base[f"random_{s}"].mean().item()
        out[f"{prefix}{s}"] = values[s]
        out[f"{prefix}{s}_baseline_centre"] = centre
        out[f"{prefix}{s}_baseline_random"] = random
        out[f"{prefix}{s}_margin"] = values[s] - max(centre, random)
    return out


def _check(maps: torch.Tensor, masks: torch.Tensor) -> None:
    if maps.shape != masks.shape or maps.dim() != 3:
        raise ValueError(
            f"maps and masks must both be (N, H, W); got {tuple(maps.shape)} and {tuple(masks.shape)}"
        )
