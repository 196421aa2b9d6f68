"""ActivationMaximization: what a fixed set of units in each layer responds to, per epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from typing_extensions import override

from zflight.analysis.actmax import activation_maximization
from zflight.analysis.images import (
    add_border,
    caption,
    fmt,
    grid,
    resize,
    title_bar,
    to_uint8,
)
from zflight.callbacks.base import AnalysisContext, VisualizationCallback
from zflight.callbacks.results import Figure, Probe, VizResult

_RED = (210, 30, 30)


class ActivationMaximization(VisualizationCallback):
    """Gradient-ascent images for a few units per layer, all of them in one batched optimisation.

    Conv layers maximise one feature map at its strongest position (``spatial``), ``fc8`` one
    class logit; images are kept within the valid pixel range of the probe's normalisation.
    Figure ``<layer>``: a titled grid of the units' images, each headed by the unit (class name
    for fc8) and the activation reached; a unit whose activation stayed at or below zero is
    framed in red and marked "not reached". Scalars ``<layer>/activation``: the mean activation
    reached; ``<layer>/positive_share``: the share of the layer's units that reached a positive
    activation.

    Args:
        layers: layer names (``model.layer(name)``) to visualise.
        units_per_layer: how many units per layer: evenly spaced channel indices (classes for fc8).
        units: explicit unit indices per layer name, overriding ``units_per_layer`` there.
        steps, lr, param, jitter, l2, tv, blur_every, decay, init, spatial, decorrelate, squash,
            transforms: see ``zflight.analysis.actmax.activation_maximization``. By default the
            colours are decorrelated, squashed into the valid range by a sigmoid, and every step
            shifts, scales and rotates the image at random (Lucent's recipe): on the default
            run's last checkpoint 6% of the pixels of the conv2, conv5 and fc8 images end
            saturated instead of 72%, and 23 of the 24 units are reached (a weak conv5 unit
            stays just below zero and is marked; all 24 with the clamped images). The defaults (24 units, 24
            steps) cost about 1.7 CPU-seconds per call for ZFNet at width 0.25 and 64 px,
            about six training steps of batch 128.
        class_layer: the layer whose units are classes (captioned with class names).
        upscale: integer magnification of each tile for display (at least enough for ``tile``).
        tile: tiles are enlarged (nearest neighbour, whole factors) to at least this many pixels.
        **kwargs: schedule and probe options of ``VisualizationCallback``.

    Example:
        >>> ActivationMaximization(layers=["conv5", "fc8"], units={"conv5": [0, 3, 7]}, steps=64)
    """

    name = "actmax"

    def __init__(
        self,
        layers: Sequence[str] = ("conv2", "conv5", "fc8"),
        units_per_layer: int = 8,
        units: Mapping[str, Sequence[int]] | None = None,
        steps: int = 64,
        lr: float = 0.05,
        param: str = "fourier",
        jitter: int = 4,
        l2: float = 1e-3,
        tv: float = 1e-2,
        blur_every: int = 0,
        decay: float = 1.0,
        init: str = "noise",
        class_layer: str = "fc8",
        upscale: int = 1,
        tile: int = 128,
        spatial: str = "max",
        seed: int = 0,
        decorrelate: bool = True,
        squash: bool = True,
        transforms: str = "robust",
        **kwargs,
    ) -> None:
        kwargs.setdefault("grad", True)
        kwargs.setdefault("every_n_epochs", 2)
        super().__init__(**kwargs)
        self.layers = list(layers)
        self.units_per_layer = units_per_layer
        self.units = {k: list(v) for k, v in (units or {}).items()}
        self.options = dict(
            steps=steps,
            lr=lr,
            param=param,
            jitter=jitter,
            l2=l2,
            tv=tv,
            blur_every=blur_every,
            decay=decay,
            init=init,
            seed=seed,
            spatial=spatial,
            decorrelate=decorrelate,
            squash=squash,
            transforms=transforms,
        )
        self.spatial = spatial
        self.tile = tile
        self.class_layer = class_layer
        self.upscale = upscale

    def chosen_units(self, model: nn.Module) -> dict[str, list[int]]:
        """The fixed units per layer: explicit ``units`` or evenly spaced indices over the layer."""
        chosen = {}
        for name in self.layers:
            if name in self.units:
                chosen[name] = self.units[name]
                continue
            size = _num_units(model.layer(name))
            k = min(self.units_per_layer, size)
            chosen[name] = torch.linspace(0, size - 1, k).round().long().tolist() if k > 1 else [0]
        return chosen

    @override
    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult:
        chosen = self.chosen_units(model)
        targets = [(model.layer(name), u) for name, units in chosen.items() for u in units]
        with ctx.autocast():
            result = activation_maximization(
                model,
                targets,
                tuple(probe.images.shape[-2:]),
                channels=probe.images.shape[1],
                bounds=_valid_range(probe),
                **self.options,
            )
        mean = torch.as_tensor(probe.mean, device=result.images.device).view(-1, 1, 1)
        std = torch.as_tensor(probe.std, device=result.images.device).view(-1, 1, 1)
        pictures = iter(zip(result.images * std + mean, result.activations.tolist()))
        figures: dict[str, Figure] = {}
        scalars: dict[str, float] = {}
        for name, units in chosen.items():
            tiles, acts = [], []
            for u, (picture, act) in zip(units, pictures):
                tiles.append(self._tile(name, u, picture, act, probe.class_names))
                acts.append(act)
            reached = sum(a > 0 for a in acts)
            scalars[f"{name}/activation"] = sum(acts) / len(acts)
            scalars[f"{name}/positive_share"] = reached / len(acts)
            figures[name] = self._figure(name, tiles, reached, len(acts), ctx.epoch)
        return VizResult(figures=figures, scalars=scalars)

    def _tile(
        self, layer: str, unit: int, picture: torch.Tensor, act: float, names: list[str]
    ) -> np.ndarray:
        """The unit's image, enlarged, headed by the unit and its activation; a unit that never
        became positive is framed in red and marked "not reached"."""
        tile = to_uint8(picture, 0.0, 1.0)
        scale = max(self.upscale, -(-self.tile // tile.shape[0]))
        tile = resize(tile, (tile.shape[0] * scale, tile.shape[1] * scale))
        label = names[unit] if layer == self.class_layer and unit < len(names) else f"#{unit}"
        head = f"{label}: {fmt(act)}"
        if act > 0:
            return caption(add_border(tile, (255, 255, 255), 3), head)
        return caption(add_border(tile, _RED, 3), f"{head}, not reached", colour=_RED, bold=True)

    def _figure(
        self, layer: str, tiles: list[np.ndarray], reached: int, total: int, epoch: int
    ) -> Figure:
        what = "class logit" if layer == self.class_layer else f"{self.spatial} of the feature map"
        steps = self.options["steps"]
        title = f"Activation maximisation, {layer}, epoch {epoch}: {reached} of {total} reached"
        note = (
            f"Each tile is an input found by {steps} steps of gradient ascent on one {layer} unit "
            f"({what}, value above the tile). Red frame, 'not reached': the unit's activation "
            "stayed at or below zero, so the picture shows no preference of the unit."
        )
        text = (
            f"{layer}: inputs that maximise {total} units ({what}), epoch {epoch}; {reached} of "
            f"{total} reached a positive activation"
            + ("" if reached == total else "; red frames mark the units that did not")
            + "."
        )
        ncols = min(len(tiles), 8)
        return Figure(title_bar(grid(tiles, ncols=ncols, pad=4), title, note), text)


def _valid_range(probe: Probe) -> tuple[list[float], list[float]]:
    """Per-channel range of normalised inputs that are real pixel values in [0, 1]."""
    low = [(0.0 - m) / s for m, s in zip(probe.mean, probe.std)]
    high = [(1.0 - m) / s for m, s in zip(probe.mean, probe.std)]
    return low, high


def _num_units(layer: nn.Module) -> int:
    for attr in ("out_channels", "out_features"):
        if hasattr(layer, attr):
            return int(getattr(layer, attr))
    raise ValueError(
        f"cannot tell how many units {type(layer).__name__} has; pass units explicitly"
    )
