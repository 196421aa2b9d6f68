"""Top-k mining of a layer's feature maps over a stream of batches (Zeiler & Fergus 2013, Fig. 2).

For the features that will be drawn, the k images with the strongest single activation are kept
while the validation loop runs: per batch, a channel-wise spatial max, a top-k over the batch for
the drawn features and, every few batches, a merge on (F, k) tensors. Every other feature keeps
only its running maximum (what feature selection and the silent-feature count need). The state
is fixed-size tensors, so the per-process results of a distributed run merge with one all-gather
each.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from zflight.analysis.deconvnet import Deconvnet, as_pair, receptive_field
from zflight.analysis.shards import index, sharded
from zflight.analysis.stopping import checked


@dataclass
class TopK:
    """The k strongest activations of the stored channels of one layer, the maximum of all.

    ``values``/``positions``/``keys`` are (C, k): activation, flat (h, w) index and image key
    (``image_keys``) of each kept image (``-inf`` marks an empty slot). Rows of the F stored
    ``channels`` hold their top k; every other row holds only the channel's maximum (position -1,
    key 0), the rest of the row empty, so ``sorted().values[:, 0]`` is every channel's maximum.
    ``images`` (F, k, 3, H, W) holds the stored channels' images, slot for slot. ``map_size`` is
    the layer's (h, w).
    """

    values: torch.Tensor
    positions: torch.Tensor
    keys: torch.Tensor
    images: torch.Tensor
    channels: torch.Tensor
    map_size: tuple[int, int]

    def sorted(self) -> TopK:
        """The same entries with every row ordered from strongest to weakest."""
        values, order = self.values.sort(dim=1, descending=True)
        positions, keys = self.positions.gather(1, order), self.keys.gather(1, order)
        stored = order[self.channels]
        images = self.images[torch.arange(len(stored), device=stored.device)[:, None], stored]
        return TopK(values, positions, keys, images, self.channels, self.map_size)

    def gathered(self, all_gather: Callable[[torch.Tensor], torch.Tensor]) -> TopK:
        """Merge the results of all processes: ``all_gather`` concatenates along dim 0 (identity on
        one process). Call on every process. An image kept twice (samplers pad the last shard
        with repeated samples) is kept once (see ``_drop_repeats``)."""
        c, k = self.values.shape
        f = len(self.channels)

        def per_channel(t: torch.Tensor) -> torch.Tensor:
            t = all_gather(t)
            return t.view(-1, c, k).transpose(0, 1).reshape(c, -1)

        values, positions, keys = (per_channel(t) for t in (self.values, self.positions, self.keys))
        images = all_gather(self.images)
        images = images.view(-1, f, k, *images.shape[2:]).transpose(0, 1).flatten(1, 2)
        values, pick = _drop_repeats(values, positions, keys).topk(k, dim=1)
        positions, keys = positions.gather(1, pick), keys.gather(1, pick)
        # a channel that is not stored keeps its overall maximum (column 0) and nothing else
        later = torch.arange(k, device=values.device) > 0
        values = values.masked_fill((positions < 0) & later, float("-inf"))
        images = images[torch.arange(f, device=pick.device)[:, None], pick[self.channels]]
        return TopK(values, positions, keys, images, self.channels, self.map_size)


def _drop_repeats(
    values: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """Set to -inf each entry repeating an earlier one of its row: same image key, same position
    and a value within 1% (one image seen twice, possibly in batches of different sizes). Bare
    maxima (position -1) are never repeats: each process's maximum competes."""
    same = (keys[:, :, None] == keys[:, None, :]) & (positions[:, :, None] == positions[:, None, :])
    close = (values[:, :, None] - values[:, None, :]).abs() <= 0.01 * values.abs()[:, :, None]
    earlier = torch.ones_like(same[0]).tril(-1)
    repeat = (same & close & earlier).any(dim=2) & torch.isfinite(values) & (positions >= 0)
    return values.masked_fill(repeat, float("-inf"))


def image_keys(images: torch.Tensor, runs: int = 16, run: int = 16) -> torch.Tensor:
    """(B,) int64 key of each image from the raw bits of ``runs`` evenly spaced runs of ``run``
    consecutive values (cheap: a few cache lines per image).

    The sum of bits times fixed odd multipliers wraps around and does not depend on order, so an
    image gets the same key on any device and in any batch. Different images share a key only if
    they agree bit for bit on every sampled value.
    """
    flat = images.detach().flatten(1)
    n = flat.shape[1]
    if n > runs * run:
        flat = flat[:, : n // runs * runs].reshape(len(flat), runs, -1)[:, :, :run].flatten(1)
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[flat.element_size()]
    return (flat.contiguous().view(ints).long() * _multipliers(flat.shape[1], flat.device)).sum(
        dim=1
    )


@functools.lru_cache(maxsize=8)
def _multipliers(n: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(20131112)
    return (torch.randint(-(2**62), 2**62, (n,), generator=g) | 1).to(device)


class StreamingTopK:
    """Running top-k per channel of one layer, fed batch by batch from a forward hook.

    Args:
        k: images kept per channel.
        channels: the channels whose winning images are stored (the ones that will be drawn).
        buffer, buffer_bytes: candidates wait, with a reference to their batch's images, until
            ``buffer`` batches or ``buffer_bytes`` of those images are pending; then they are
            merged. A batch costs a few small ops (its top-k over the batch), the merge is paid
            once per full buffer, and only images that survive the buffered batches are copied
            into the store (early in an epoch most entrants are soon beaten). The default holds a
            small validation set entirely (64 px shapes: one merge per epoch) and 1-2 batches of
            224 px ImageNet images.

    Stored images live in fixed cells that the kept entries point to, so an image is copied at
    most once, when it enters, and never moved.
    """

    def __init__(
        self, k: int, channels: Sequence[int], buffer: int = 64, buffer_bytes: int = 256 << 20
    ) -> None:
        if k < 1 or buffer < 1:
            raise ValueError(f"k and buffer must be >= 1, got k={k}, buffer={buffer}")
        self.k = k
        self.buffer = buffer
        self.buffer_bytes = buffer_bytes
        self._pending_bytes = 0
        self.channels = torch.as_tensor(list(channels), dtype=torch.long)
        self.maximum: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.cells: torch.Tensor | None = None
        self.store: torch.Tensor | None = None
        self.map_size: tuple[int, int] = (0, 0)
        self._filled: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None
        self._pending: list[tuple[torch.Tensor, ...]] = []

    @property
    def empty(self) -> bool:
        """True until the first batch arrives."""
        return self.values is None

    def _start(self, acts: torch.Tensor, images: torch.Tensor) -> None:
        c, f, dev = acts.shape[1], len(self.channels), acts.device
        if f and (self.channels.min() < 0 or self.channels.max() >= c):
            raise ValueError(f"stored channels must lie in [0, {c}); got {self.channels.tolist()}")
        self.channels = self.channels.to(dev)
        self.maximum = torch.full((c,), float("-inf"), device=dev)
        self.values = torch.full((f, self.k), float("-inf"), device=dev)
        self.positions = torch.zeros((f, self.k), dtype=torch.long, device=dev)
        self.keys = torch.zeros((f, self.k), dtype=torch.long, device=dev)
        self.cells = torch.arange(f * self.k, device=dev).view(f, self.k)
        self.store = images.new_empty((f * self.k, *images.shape[1:]))
        self._filled = torch.zeros(f * self.k, dtype=torch.bool, device=dev)
        self._rows = self.channels[:, None]
        self.map_size = (int(acts.shape[2]), int(acts.shape[3]))

    @torch.no_grad()
    def update(
        self,
        acts: torch.Tensor,
        images: torch.Tensor,
        keys: torch.Tensor | None = None,
        maxima: torch.Tensor | None = None,
    ) -> None:
        """Fold in one batch: ``acts`` (B, C, h, w) activations of ``images`` (B, ...).

        ``keys`` (the batch's ``image_keys``) and ``maxima`` ((B, C) spatial maxima of ``acts``,
        e.g. read off a following max-pool, see ``pool_keeps_maximum``) save recomputation.
        """
        if self.values is None:
            self._start(acts, images)
        acts = acts.detach()
        # amax is several times cheaper than max-with-indices; positions are found for candidates.
        maxima = (acts.amax(dim=(2, 3)) if maxima is None else maxima.detach()).float()
        torch.maximum(self.maximum, maxima.amax(dim=0), out=self.maximum)
        if not len(self.channels):
            return
        stored = maxima.index_select(1, self.channels)
        values, index = (t.t() for t in stored.topk(min(self.k, acts.shape[0]), dim=0))
        positions = acts[index, self._rows].flatten(2).argmax(dim=2)
        keys = (image_keys(images) if keys is None else keys)[index]
        self._pending.append((values, positions, keys, index, images.detach()))
        self._pending_bytes += images.numel() * images.element_size()
        if len(self._pending) >= self.buffer or self._pending_bytes >= self.buffer_bytes:
            self._merge()

    def _merge(self) -> None:
        """Fold the buffered candidates into the kept entries; copy the images that entered."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if not pending:
            return
        k = self.k
        self.values, pick = torch.cat([self.values, *(p[0] for p in pending)], dim=1).topk(k, dim=1)
        self.positions = torch.cat([self.positions, *(p[1] for p in pending)], dim=1).gather(
            1, pick
        )
        self.keys = torch.cat([self.keys, *(p[2] for p in pending)], dim=1).gather(1, pick)
        entering = pick >= k
        if not bool(entering.any()):
            return
        # Kept entries keep their cells; entrants take the cells of the evicted, in order.
        kept = torch.zeros(
            pick.shape[0],
            k + sum(p[0].shape[1] for p in pending),
            dtype=torch.bool,
            device=pick.device,
        ).scatter_(1, pick, True)[:, :k]
        freed = self.cells.gather(1, torch.argsort(kept.to(torch.uint8), dim=1, stable=True))
        rank = (entering.cumsum(dim=1) - 1).clamp(min=0)
        self.cells = torch.where(
            entering, freed.gather(1, rank), self.cells.gather(1, pick.clamp(max=k - 1))
        )
        column = (pick - k)[entering]
        dst = self.cells[entering]
        src = torch.cat([p[3] for p in pending], dim=1).gather(1, (pick - k).clamp(min=0))
        src = src[entering]
        widths = torch.tensor([p[0].shape[1] for p in pending], device=pick.device)
        batch = torch.repeat_interleave(torch.arange(len(pending), device=pick.device), widths)[
            column
        ]
        self._filled[dst] = True
        for i, p in enumerate(pending):
            mine = batch == i
            self.store.index_copy_(
                0, dst[mine], p[4].index_select(0, src[mine]).to(self.store.dtype)
            )

    def result(self) -> TopK:
        """The current state as a ``TopK`` (call ``sorted()`` for ordered rows)."""
        if self.values is None:
            raise RuntimeError("no batch has been seen yet")
        with torch.inference_mode(self.store.is_inference()):  # the store may come from one
            self._merge()
            empty = ~self._filled
            if bool(empty.any()):
                self.store[empty] = 0
                self._filled[empty] = True
        images = self.store[self.cells.flatten()].view(*self.cells.shape, *self.store.shape[1:])
        c = len(self.maximum)
        values = torch.full((c, self.k), float("-inf"), device=self.maximum.device)
        values[:, 0] = self.maximum
        positions = torch.full((c, self.k), -1, dtype=torch.long, device=values.device)
        keys = torch.zeros((c, self.k), dtype=torch.long, device=values.device)
        values[self.channels], positions[self.channels] = self.values, self.positions
        keys[self.channels] = self.keys
        return TopK(values, positions, keys, images, self.channels, self.map_size)


def pool_keeps_maximum(pool: nn.MaxPool2d, in_size: Sequence[int], out_size: Sequence[int]) -> bool:
    """Whether the windows of ``pool`` cover every input position, so that the spatial maximum of
    its (smaller) output equals that of its input: the cheap place to take a channel's maximum."""
    if as_pair(pool.dilation) != (1, 1):
        return False
    k, s, p = (
        as_pair(pool.kernel_size),
        as_pair(pool.stride or pool.kernel_size),
        as_pair(pool.padding),
    )
    return all(
        s[a] <= k[a] and (out_size[a] - 1) * s[a] - p[a] + k[a] >= in_size[a] for a in (0, 1)
    )


def project_winners(
    deconv: Deconvnet,
    layer: str,
    top: TopK,
    chunk: int = 64,
    rank: int = 0,
    world_size: int = 1,
    all_gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deconvnet projections of the stored winners, and their image patches, cropped to the
    layer's receptive field: two (F, k, 3, h, w) tensors (projections, patches).

    With ``world_size > 1`` each rank projects one share of the F x k winners and ``all_gather``
    (concatenating along dim 0, called on every rank) brings them together (``shards.sharded``).
    """
    f, k = top.images.shape[:2]
    images = top.images.flatten(0, 1)
    channels = top.channels.repeat_interleave(k)
    positions = top.positions[top.channels].flatten()

    def project(rows: list[int]) -> tuple[torch.Tensor]:
        x, c, p = (index(t, rows) for t in (images, channels, positions))
        parts = [
            deconv.project(x[i : i + chunk], layer, c[i : i + chunk], p[i : i + chunk])
            for i in checked(range(0, len(x), chunk))
        ]
        return (torch.cat(parts),)

    (projections,) = (
        sharded(project, len(images), rank, world_size, all_gather) if len(images) else (images,)
    )
    field = receptive_field(deconv.trunk, layer)
    boxes = unit_boxes(positions, top.map_size[1], field, tuple(images.shape[-2:]))
    proj, patches = crop(projections, boxes), crop(images, boxes)
    return proj.view(f, k, *proj.shape[1:]), patches.view(f, k, *patches.shape[1:])


def unit_boxes(
    positions: torch.Tensor,
    map_width: int,
    field: tuple[int, int, int],
    image_size: tuple[int, int],
) -> torch.Tensor:
    """(N, 4) crop boxes (top, left, height, width) in pixels for units at flat ``positions``.

    Each box is the unit's receptive field (``field`` = size, stride, offset) shrunk to the image
    if larger and shifted inside it, so all boxes of a layer have one size and show real pixels.
    """
    size, stride, offset = field
    h, w = image_size
    bh, bw = min(size, h), min(size, w)
    py = torch.div(positions, map_width, rounding_mode="floor")
    px = positions % map_width
    top = (offset + py * stride).clamp(0, h - bh)
    left = (offset + px * stride).clamp(0, w - bw)
    return torch.stack([top, left, torch.full_like(top, bh), torch.full_like(left, bw)], dim=1)


def crop(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) crops of (N, C, H, W) ``images``, one equal-size box each from ``unit_boxes``."""
    if len(images) == 0:
        return images
    bh, bw = int(boxes[0, 2]), int(boxes[0, 3])
    return torch.stack(
        [
            img[:, t : t + bh, left : left + bw]
            for img, (t, left) in zip(images, boxes[:, :2].tolist())
        ]
    )
