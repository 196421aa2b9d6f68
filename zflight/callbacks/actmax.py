"""ActivationMaximization: what a fixed set of units in each layer responds to, per epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from typing_extensions import override

from zflight.analysis.actmax import activation_maximization
from zflight.analysis.images import caption, grid, resize, to_uint8
from zflight.callbacks.base import AnalysisContext, VisualizationCallback
from zflight.callbacks.results import Probe, VizResult


class ActivationMaximization(VisualizationCallback):
    """Gradient-ascent images for a few units per layer, all of them in one batched optimisation.

    Conv layers maximise the mean of one feature map, ``fc8`` one class logit; images are kept
    within the valid pixel range of the probe's normalisation. Figure
    ``<layer>``: a grid of the units' images, captioned with the unit
    (class name for fc8) and its activation; scalar ``<layer>/activation``: the mean activation
    reached, which grows as units become selective.

    Args:
        layers: layer names (``model.layer(name)``) to visualise.
        units_per_layer: how many units per layer: evenly spaced channel indices (classes for fc8).
        units: explicit unit indices per layer name, overriding ``units_per_layer`` there.
        steps, lr, param, jitter, l2, tv, blur_every, decay, init: see
            ``zflight.analysis.actmax.activation_maximization``. The defaults (24 units, 24
            steps) cost about 1.7 CPU-seconds per call for ZFNet at width 0.25 and 64 px,
            about six training steps of batch 128.
        class_layer: the layer whose units are classes (captioned with class names).
        upscale: integer magnification of each tile for display.
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
        steps: int = 24,
        lr: float = 0.03,
        param: str = "fourier",
        jitter: int = 2,
        l2: float = 1e-3,
        tv: float = 1e-2,
        blur_every: int = 0,
        decay: float = 1.0,
        init: str = "noise",
        class_layer: str = "fc8",
        upscale: int = 1,
        seed: int = 0,
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
        )
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
        pictures = iter(zip(result.images * std + mean, result.activations))
        figures: dict[str, np.ndarray] = {}
        scalars: dict[str, float] = {}
        for name, units in chosen.items():
            tiles, acts = [], []
            for u, (picture, act) in zip(units, pictures):
                tile = to_uint8(picture, 0.0, 1.0)
                if self.upscale > 1:
                    tile = resize(
                        tile, (tile.shape[0] * self.upscale, tile.shape[1] * self.upscale)
                    )
                label = (
                    probe.class_names[u]
                    if name == self.class_layer and u < len(probe.class_names)
                    else str(u)
                )
                tiles.append(caption(tile, f"{label} {act:.3g}"))
                acts.append(act)
            figures[name] = grid(tiles, ncols=len(tiles))
            scalars[f"{name}/activation"] = torch.stack(acts).mean().item()
        return VizResult(figures=figures, scalars=scalars)


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
