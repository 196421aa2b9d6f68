"""Faithfulness of an attribution map: deletion and insertion curves (Petsiuk et al., RISE, 2018).

Deletion replaces the image's pixels with a fill, most important first by the map, and follows
the probability of the true class; insertion starts from the fill and reveals the pixels in the
same order. A faithful map makes deletion fall fast (low area under the curve) and insertion rise
fast (high area). A random pixel order is the yardstick: its curves are what any map must beat.

Pixels are ranked by value; ties (blocky occlusion maps, the zeros of a rectified map) are broken
by a seeded random permutation, never by raster order, which would favour the top of the image.
All (order, mode, image, step) copies are built on the images' device in chunks and can be split
across ranks and gathered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn


def pixel_order(maps: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(N, H*W) pixel indices of each (N, H, W) map, largest value first; ties in random order."""
    flat = maps.flatten(1).float()
    shuffle = torch.randperm(flat.shape[1], generator=generator).to(flat.device)
    ranked = flat[:, shuffle].argsort(dim=1, descending=True, stable=True)
    return shuffle[ranked]


def random_order(n: int, pixels: int, generator: torch.Generator | None = None) -> Tensor:
    """(n, pixels) independent random pixel orders (the baseline every map must beat)."""
    return torch.stack([torch.randperm(pixels, generator=generator) for _ in range(n)])


def auc(curves: Tensor) -> Tensor:
    """Area under (..., steps + 1) curves sampled evenly on [0, 1] (trapezoid rule)."""
    return torch.trapezoid(curves.double(), dx=1.0 / (curves.shape[-1] - 1), dim=-1)


def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    fills: Tensor,
    orders: Tensor,
    *,
    steps: int = 16,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    all_gather: Callable[[Tensor], Tensor] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> Tensor:
    """(M, 2, N, steps + 1) probability of the true class under deletion (index 0) and insertion
    (index 1) for M pixel orders of the N ``images`` (normalised, (N, C, H, W)).

    ``fills`` (N, C, H, W) is what a removed pixel shows (the occluder's fill); ``orders`` (M, N,
    H*W) lists pixel indices, most important first. At step k of ``steps`` the first
    round(k H W / steps) pixels of the order are removed (deletion) or revealed (insertion).
    The curves' ends (the image, the fill) are evaluated once per image; this rank evaluates
    one contiguous share of the M*2*N*(steps-1) + 2*N copies, ``batch_size`` at a time; ``all_gather`` concatenates the shares (called once on every rank when
    ``world_size > 1``).
    """
    if world_size > 1 and all_gather is None:
        raise ValueError("world_size > 1 needs all_gather")
    m, n, pixels = orders.shape
    if n != images.shape[0] or pixels != images.shape[2] * images.shape[3]:
        raise ValueError(
            f"orders must be (M, {images.shape[0]}, {images.shape[2] * images.shape[3]}); "
            f"got {tuple(orders.shape)}"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = images.device
    labels = labels.to(device).long()
    # position of every pixel in each order: pixel p is changed at step k when place[p] < count[k]
    place = torch.empty(m, n, pixels, dtype=torch.int32, device=device)
    place.scatter_(
        2,
        orders.to(device).long(),
        torch.arange(pixels, dtype=torch.int32, device=device).expand(m, n, pixels).contiguous(),
    )
    count = torch.round(torch.arange(steps + 1, device=device) * pixels / steps).int()
    # the curves' ends are the same for every order: the image itself and the fill, once each
    inner = _grid(torch.arange(m), torch.arange(2), torch.arange(n), torch.arange(1, steps))
    ends = _grid(torch.zeros(1), torch.zeros(1), torch.arange(n), torch.tensor([0, steps]))
    jobs = torch.cat([inner, ends]).to(device)
    per = -(-jobs.shape[0] // world_size)
    mine = jobs[rank * per : (rank + 1) * per]
    mine = torch.cat([mine, jobs[:1].expand(per - mine.shape[0], 4)])
    layout = input_layout(model)
    out = []
    with torch.inference_mode(), (autocast or contextlib.nullcontext)():
        for i in range(0, per, batch_size):
            o, mode, img, k = mine[i : i + batch_size].unbind(1)
            changed = (place[o, img] < count[k][:, None]).view(-1, 1, *images.shape[2:])
            deleted = torch.where(changed, fills[img], images[img])
            revealed = torch.where(changed, images[img], fills[img])
            x = torch.where((mode == 0).view(-1, 1, 1, 1), deleted, revealed)
            x = x.contiguous(memory_format=layout)
            probs = model(x).float().softmax(1)
            out.append(probs.gather(1, labels[img][:, None]).squeeze(1))
    local = torch.cat(out)
    gathered = (local if world_size == 1 else all_gather(local))[: jobs.shape[0]]
    middle = gathered[: inner.shape[0]].reshape(m, 2, n, steps - 1)
    image, fill = gathered[inner.shape[0] :].reshape(n, 2).unbind(1)
    image, fill = image.expand(m, n)[:, :, None], fill.expand(m, n)[:, :, None]
    deletion = torch.cat([image, middle[:, 0], fill], 2)
    insertion = torch.cat([fill, middle[:, 1], image], 2)
    return torch.stack([deletion, insertion], 1)


def _grid(*axes: Tensor) -> Tensor:
    """(K, len(axes)) long: every combination of the axes' values (none when one is empty)."""
    mesh = torch.meshgrid(*[a.long() for a in axes], indexing="ij")
    return torch.stack([g.reshape(-1) for g in mesh], 1)


def input_layout(model: nn.Module) -> torch.memory_format:
    """The memory format the model's convolutions are kept in (channels_last or not): inputs in
    the same layout skip a conversion in every layer."""
    for p in model.parameters():
        if p.dim() == 4:
            nhwc = p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            return torch.channels_last if nhwc else torch.contiguous_format
    return torch.contiguous_format
