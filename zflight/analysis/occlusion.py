"""Occlusion sensitivity (Zeiler & Fergus 2013, Fig. 7): slide a square over each image and
record, per position, the probability of the true class, the most probable class and the total
activation of the strongest layer-5 feature map of the unoccluded image.

Positions. Along an axis of length ``L`` a window of size ``k`` starts at 0, s, 2s, ... while it
fits, plus one window flush with the far border if the grid does not reach it (``L - k``);
a window larger than the image is clipped to it. Every pixel is covered by at least one window
(``stride <= size`` is required).

Maps on the image. A pixel takes the mean of the values of the windows that cover it
(``upsample``); class labels take the label of the covering window whose centre is nearest
(``label_image``, ties to the earlier window). With this rule ``base_prob - upsample(prob)``
is what Captum's ``Occlusion`` reports for the same windows.

Computation. Occluded copies are built with tensor ops and evaluated in chunks sized to a memory
budget under ``torch.inference_mode()``. Models with a plain ``features`` trunk and a
``classifier`` head (ZFNet, torchvision's AlexNet/VGG) use exact incremental inference
(``zflight.analysis.incremental``); other models are re-run in full. Positions can be split
across ranks and gathered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zflight.analysis.deconvnet import resolve_layer
from zflight.analysis.incremental import IncrementalTrunk, as_pair
from zflight.analysis.stopping import checked

FILLS = ("mean", "zero", "blur")
METHODS = ("auto", "incremental", "full")


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Window starts along one axis: 0, s, 2s, ... while the window fits, plus one flush at the end."""
    if size < 1 or stride < 1:
        raise ValueError(f"occluder size and stride must be >= 1; got {size}, {stride}")
    if stride > size:
        raise ValueError(f"stride {stride} > size {size} would leave pixels no window covers")
    if size >= length:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def coverage(length: int, starts: Sequence[int], size: int) -> Tensor:
    """(length, len(starts)) 0/1 matrix: which windows cover each pixel."""
    pixels = torch.arange(length)[:, None]
    first = torch.as_tensor(list(starts))[None]
    return ((pixels >= first) & (pixels < first + size)).float()


@dataclass
class OcclusionMaps:
    """Per-position results, (N, rows, cols) each, and the geometry that places them on the image."""

    prob: Tensor
    label: Tensor
    feature: Tensor | None
    channel: Tensor | None
    base_prob: Tensor
    base_label: Tensor
    base_feature: Tensor | None
    tops: list[int]
    lefts: list[int]
    size: tuple[int, int]
    image_size: tuple[int, int]
    rtol: float = 1e-4

    def drop(self) -> Tensor:
        """(N, rows, cols) fall in true-class probability caused by the occluder; a fall within
        ``rtol`` of the image's base probability is rounding and counts as zero (``zero_rtol``)."""
        drop = self.base_prob[:, None, None] - self.prob
        small = drop.abs() <= self.rtol * self.base_prob[:, None, None]
        return torch.where(small, torch.zeros_like(drop), drop)

    def upsample(self, values: Tensor) -> Tensor:
        """(N, H, W): each pixel is the mean of ``values`` (N, rows, cols) over the windows covering it."""
        cy = coverage(self.image_size[0], self.tops, self.size[0]).to(values.device)
        cx = coverage(self.image_size[1], self.lefts, self.size[1]).to(values.device)
        total = torch.einsum("ip,npq,jq->nij", cy, values.float(), cx)
        return total / (cy.sum(1)[:, None] * cx.sum(1)[None, :])

    def label_image(self) -> Tensor:
        """(N, H, W) class labels: each pixel takes the covering window whose centre is nearest."""
        rows = _nearest(self.image_size[0], self.tops, self.size[0]).to(self.label.device)
        cols = _nearest(self.image_size[1], self.lefts, self.size[1]).to(self.label.device)
        return self.label[:, rows[:, None], cols[None, :]]


def _nearest(length: int, starts: Sequence[int], size: int) -> Tensor:
    centre = torch.as_tensor(list(starts)).double() + (min(size, length) - 1) / 2
    dist = (torch.arange(length).double()[:, None] - centre[None]).abs()
    dist = torch.where(coverage(length, starts, size) > 0, dist, torch.inf)
    return dist.argmin(1)


def fill_images(
    images: Tensor,
    fill: str | float,
    size: tuple[int, int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """What an occluder shows at each pixel: ``"mean"`` the data set mean (0 after normalisation),
    ``"zero"`` black in pixel space, ``"blur"`` the image under a Gaussian of sigma size/4,
    a number: that constant in normalised units."""
    if not isinstance(fill, str):
        return torch.full_like(images, float(fill))
    if fill == "mean":
        return torch.zeros_like(images)
    if fill == "zero":
        c, kw = images.shape[1], dict(dtype=images.dtype, device=images.device)
        m, s = torch.tensor(mean or [0.0] * c, **kw), torch.tensor(std or [1.0] * c, **kw)
        return (-m / s).view(1, -1, 1, 1).expand_as(images).clone()
    if fill == "blur":
        return gaussian_blur(images, max(size) / 4)
    raise ValueError(f"occlusion fill must be a number or one of {', '.join(FILLS)}; got {fill!r}")


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) images, borders replicated."""
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def occluded_copies(
    images: Tensor, fills: Tensor, n: Tensor, top: Tensor, left: Tensor, size: tuple[int, int]
) -> Tensor:
    """(J, C, H, W): image ``n[j]`` with the square at (top[j], left[j]) taken from ``fills``."""
    h, w = images.shape[2:]
    rows = torch.arange(h, device=images.device)[None]
    cols = torch.arange(w, device=images.device)[None]
    in_y = (rows >= top[:, None]) & (rows < top[:, None] + size[0])
    in_x = (cols >= left[:, None]) & (cols < left[:, None] + size[1])
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    return torch.where(mask, fills[n], images[n])


def split_network(model: nn.Module) -> tuple[nn.Sequential, Callable[[Tensor], Tensor]] | None:
    """(trunk, head) for models shaped like ZFNet: ``features``, optional ``avgpool``, ``classifier``."""
    trunk, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
    if not isinstance(trunk, nn.Sequential) or not isinstance(classifier, nn.Module):
        return None
    pool = getattr(model, "avgpool", None) or nn.Identity()
    return trunk, lambda x: classifier(torch.flatten(pool(x), 1))


def occlusion_maps(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    size: int | tuple[int, int] = 16,
    stride: int | tuple[int, int] = 4,
    fill: str | float = "mean",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    feature_layer: str | None = "conv5",
    method: str = "auto",
    max_batch_bytes: int = 256 << 20,
    full_fraction: float = 0.5,
    rank: int = 0,
    world_size: int = 1,
    all_gather: Callable[[Tensor], Tensor] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> OcclusionMaps:
    """Occlusion maps of ``images`` (N, C, H, W, normalised) for their true ``labels`` (N,).

    Args:
        size, stride: occluder side and step in pixels (an int or (height, width)).
        fill: ``"mean"``, ``"zero"``, ``"blur"`` or a constant (see ``fill_images``); ``mean``
            and ``std`` are the normalisation, needed for ``"zero"``.
        feature_layer: trunk layer whose strongest map (largest total on the unoccluded image) is
            tracked, named as in ``deconvnet.resolve_layer`` (``"conv5"`` is rectified conv5);
            ``None``, or a model without a ``features`` trunk, skips it.
        method: ``"incremental"`` (exact, recomputes dirty windows only), ``"full"`` (re-runs
            every occluded copy) or ``"auto"`` (incremental where the model splits into a trunk
            and a head that reproduce its output, else full).
        max_batch_bytes: activation memory one chunk of positions may take.
        full_fraction: see ``IncrementalTrunk``.
        rank, world_size, all_gather: this rank takes one contiguous share of the (image,
            position) pairs; ``all_gather`` concatenates along dim 0 and is called once on every
            rank (only when ``world_size > 1``).
        autocast: a context manager factory, e.g. the trainer's precision context.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if world_size > 1 and all_gather is None:
        raise ValueError("world_size > 1 needs all_gather")
    (kh, kw), (sh, sw) = as_pair(size), as_pair(stride)
    height, width = images.shape[2:]
    tops, lefts = window_starts(height, kh, sh), window_starts(width, kw, sw)
    kh, kw = min(kh, height), min(kw, width)
    labels = labels.to(images.device).long()
    split = split_network(model)
    trunk, head = split if split is not None else (None, None)
    tap = resolve_layer(trunk, feature_layer) if trunk is not None and feature_layer else None
    tap_module = trunk[tap] if tap is not None else None
    with torch.inference_mode(), (autocast or contextlib.nullcontext)():
        fills = fill_images(images, fill, (kh, kw), mean, std)
        with _recording(model, tap_module) as rec:
            logits = model(images)
        channel = base_total = None
        if tap is not None:
            totals = rec["output"].float().sum((2, 3))
            channel = totals.argmax(1)
            base_total = totals.gather(1, channel[:, None]).squeeze(1)
        engine = _engine(method, trunk, head, images, logits, full_fraction)
        if engine is not None:
            steps = engine.plan((kh, kw))
            job_bytes = 4 * max(s.elements for s in steps)
            fills_last = fills.permute(0, 2, 3, 1).contiguous()

            def evaluate(jobs: Tensor) -> Tensor:
                n, top, left = jobs.unbind(1)
                ys = top[:, None] + torch.arange(kh, device=jobs.device)
                xs = left[:, None] + torch.arange(kw, device=jobs.device)
                window = fills_last[n[:, None, None], ys[:, :, None], xs[:, None, :]]
                out, total = engine.run(steps, n, top, left, window, tap, channel)
                return _pack(head(out), labels[n], total)
        else:
            job_bytes = 4 * 3 * rec["peak"]

            def evaluate(jobs: Tensor) -> Tensor:
                n, top, left = jobs.unbind(1)
                with _recording(None, tap_module) as hooked:
                    out = model(occluded_copies(images, fills, n, top, left, (kh, kw)))
                total = None
                if tap is not None:
                    rows = torch.arange(n.numel(), device=n.device)
                    total = hooked["output"][rows, channel[n]].float().sum((1, 2))
                return _pack(out, labels[n], total)

        grid = torch.cartesian_prod(
            torch.arange(images.shape[0]), torch.as_tensor(tops), torch.as_tensor(lefts)
        ).to(images.device)
        per = -(-grid.shape[0] // world_size)
        mine = grid[rank * per : (rank + 1) * per]
        mine = torch.cat([mine, grid[:1].expand(per - mine.shape[0], 3)])
        chunk = max(1, max_batch_bytes // max(1, job_bytes))
        local = torch.cat([evaluate(mine[i : i + chunk]) for i in checked(range(0, per, chunk))])
    gathered = local if world_size == 1 else all_gather(local)
    shape = (images.shape[0], len(tops), len(lefts))
    prob, label, feature = gathered[: grid.shape[0]].reshape(*shape, 3).unbind(-1)
    base = (base_prob_of(logits, labels), logits.argmax(1), base_total)
    feature = feature if tap is not None else None
    geometry = (tops, lefts, (kh, kw), (height, width))
    maps = OcclusionMaps(prob, label.round().long(), feature, channel, *base, *geometry)
    maps.rtol = zero_rtol(logits.dtype)
    return maps


def zero_rtol(dtype: torch.dtype) -> float:
    """The relative change in a class probability that rounding alone can cause when logits are
    computed in ``dtype``: 1e-4 in float32 (d p / p = (1 - p) d logit, and float32 logits of a
    ZFNet-sized net round far below 1e-4), 8 machine epsilons in half precision (0.06 in bfloat16)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(1e-4, 8 * eps)


def base_prob_of(logits: Tensor, labels: Tensor) -> Tensor:
    """(N,) softmax probability of each row's label."""
    return logits.float().softmax(1).gather(1, labels[:, None]).squeeze(1)


def _pack(logits: Tensor, labels: Tensor, total: Tensor | None) -> Tensor:
    """(J, 3) float32 rows (true-class probability, most probable class, feature total)."""
    prob = base_prob_of(logits, labels)
    total = torch.zeros_like(prob) if total is None else total.float()
    return torch.stack([prob, logits.argmax(1).float(), total], 1)


def _engine(
    method: str,
    trunk: nn.Sequential | None,
    head: Callable | None,
    images: Tensor,
    logits: Tensor,
    full_fraction: float,
) -> IncrementalTrunk | None:
    """A prepared incremental engine, or None where the model must be re-run in full."""
    if method == "full" or trunk is None:
        if method == "incremental":
            raise ValueError("incremental occlusion needs a model with `features` and `classifier`")
        return None
    engine = IncrementalTrunk(trunk, full_fraction)
    same = torch.allclose(
        head(engine.prepare(images)).float(), logits.float(), rtol=1e-4, atol=1e-5
    )
    if same:
        return engine
    if method == "incremental":
        raise ValueError("classifier(flatten(avgpool(features(x)))) does not reproduce the model")
    return None


@contextlib.contextmanager
def _recording(model: nn.Module | None, tap: nn.Module | None) -> Iterator[dict]:
    """Forward hooks while inside: ``"output"``, the last output of ``tap``; ``"peak"``, the
    largest per-sample output of any module of ``model`` (to size chunks of full re-runs)."""
    seen: dict = {"output": None, "peak": 0}

    def keep(module: nn.Module, inputs: object, output: Tensor) -> None:
        seen["output"] = output

    def measure(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, Tensor) and output.dim() > 0:
            seen["peak"] = max(seen["peak"], output[0].numel())

    handles = [tap.register_forward_hook(keep)] if tap is not None else []
    modules = model.modules() if model is not None else []
    handles += [m.register_forward_hook(measure) for m in modules]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()
