"""FilterHealth: the paper's Fig. 6 diagnosis made automatic every N epochs: which filters are dead,
untrained, aliased or duplicated, where their energy lies on one absolute frequency axis, how
gridded layer 2's projections are compared with the same network at its start, and a warning that
says what to try when a layer is truly unhealthy after warm-up."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from typing_extensions import override

from zflight.analysis.deconvnet import receptive_field, resolve_layer
from zflight.analysis.filters import FilterReport, filter_health, positive_counts
from zflight.analysis.gridding import gridding_of
from zflight.analysis.images import grid, resize, symmetric_to_uint8, title_bar
from zflight.callbacks.base import AnalysisContext, VisualizationCallback, network_of
from zflight.callbacks.filter_alerts import ADVICE, DEFAULT_ALERTS, raise_alerts
from zflight.callbacks.filter_figures import filter_grid, shown_filters, spectra_figure
from zflight.callbacks.results import Figure, Probe, VizResult


class FilterHealth(VisualizationCallback):
    """Filter grids, spectra and health scalars of chosen conv layers, every N epochs.

    Figures per layer: ``<layer>/filters`` (each filter contrast-normalised on its own, framed by
    status, with a legend) and ``<layer>/spectra`` (dB below each filter's peak, on the absolute
    axis in cycles per input pixel, the layer's Nyquist square in cyan). Scalars per layer (see
    ``FilterReport.scalars``): status fractions ``dead``, ``untrained``, ``aliased``,
    ``duplicate``; ``cos_start``; ``band_low/mid/high``; ``aliasing_mean``, ``aliasing_rel``;
    ``effective_rank``, ``at_radius``, ``anti_pairs`` and ``never_active``. With
    ``gridding_layer``: ``<layer>/gridding`` (peak-to-neighbour ratio of its deconvnet projections,
    cropped to their receptive field, at the harmonics of the cumulative stride below it),
    ``gridding_start`` (the same for the network at its start) and ``gridding_rel`` (their ratio).

    The start: each watched layer's weights (and the trunk up to ``gridding_layer``) as they are at
    the first ``fit`` start this callback sees. They are kept in the callback's checkpoint state, so
    ``resume=`` keeps the original start; a callback first attached to an already-trained model
    takes the weights at that fit start (``start_epoch`` in the state says which epoch that was),
    so "untrained" then means "not moved since this callback was attached". Without a start (plain
    ``validate``) no filter is called untrained and gridding is not compared.

    Args:
        layers: conv layers to diagnose (names for ``model.layer`` or ``named_modules``).
        dead_fraction, untrained_fraction, untrained_floor, alias_share, structure_z,
            duplicate_threshold, hysteresis, radius, n_fft: see
            ``zflight.analysis.filters.filter_health``. Each layer's statuses of the last analysis
            are kept (in the checkpoint too), so a status changes only past its threshold by the
            ``hysteresis`` margin.
        alert_thresholds: metric (or ``<layer>/<metric>``) -> value; when a layer's value rises
            above it after ``warmup_epochs`` epochs, one rank-zero warning saying what to try
            (and a W&B alert when a run is online). Merged over ``DEFAULT_ALERTS`` (``.inf``
            switches one off).
        warmup_epochs: no alerts before this epoch.
        gridding_layer: layer whose deconvnet projections are scored for gridding (None: off;
            needs the model's conv trunk as an ``nn.Sequential`` called ``features``).
        gridding_channels: strongest channels projected per probe image.
        activation_stats: count never-positive channels over the validation loop.
        stats_images: stop counting after this many validation images per rank.
        ncols: filters per row in the grids.
        **kwargs: schedule and probe options of ``VisualizationCallback``.

    Example:
        >>> FilterHealth(layers=["conv1", "conv2"], every_n_epochs=2, warmup_epochs=3)
    """

    name = "filters"

    def __init__(
        self,
        layers: Sequence[str] = ("conv1",),
        *,
        dead_fraction: float = 0.1,
        untrained_fraction: float = 1 / 3,
        untrained_floor: float | None = None,
        alias_share: float = 0.5,
        structure_z: float = 6.0,
        duplicate_threshold: float = 0.9,
        hysteresis: float = 0.1,
        radius: float = 0.1,
        n_fft: int = 64,
        alert_thresholds: Mapping[str, float] | None = None,
        warmup_epochs: int = 3,
        gridding_layer: str | None = "conv2",
        gridding_channels: int = 4,
        activation_stats: bool = True,
        stats_images: int = 2048,
        ncols: int = 12,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.layers = list(layers)
        self.options = {
            "dead_fraction": dead_fraction,
            "untrained_fraction": untrained_fraction,
            "untrained_floor": untrained_floor,
            "alias_share": alias_share,
            "structure_z": structure_z,
            "duplicate_threshold": duplicate_threshold,
            "hysteresis": hysteresis,
            "radius": radius,
            "n_fft": n_fft,
        }
        unknown = {k for k in alert_thresholds or {} if k.rsplit("/", 1)[-1] not in ADVICE}
        if unknown:
            raise ValueError(f"unknown alert metric(s) {sorted(unknown)}; valid: {sorted(ADVICE)}")
        self.alert_thresholds = {**DEFAULT_ALERTS, **(alert_thresholds or {})}
        self.warmup_epochs = warmup_epochs
        self.gridding_layer = gridding_layer
        self.gridding_channels = gridding_channels
        self.activation_stats = activation_stats
        self.stats_images = stats_images
        self.ncols = ncols
        self.above: dict[str, bool] = {}
        self.initial: dict[str, torch.Tensor] = {}
        self.previous: dict[str, torch.Tensor] = {}
        self.initial_trunk: dict[str, torch.Tensor] = {}
        self.start_epoch: int | None = None
        self._start_gridding: float | None = None
        self._positive: dict[str, torch.Tensor] = {}
        self._counted: dict[str, int] = {}
        self._entries: dict[str, int] = {}

    # ---- the start -------------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.capture_start(network_of(pl_module), trainer.current_epoch)

    def capture_start(self, model: nn.Module, epoch: int = 0) -> None:
        """Keep the current weights as the start of every watched layer not yet holding one."""
        for name in self.layers:
            if name not in self.initial:
                self.initial[name] = find_layer(model, name).weight.detach().cpu().clone()
                self.start_epoch = epoch if self.start_epoch is None else self.start_epoch
        trunk = self._trunk(model)
        if trunk is not None and not self.initial_trunk:
            self.initial_trunk = {
                k: v.detach().cpu().clone() for k, v in trunk.state_dict().items()
            }
            self._start_gridding = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "above": dict(self.above),
            "initial": dict(self.initial),
            "initial_trunk": dict(self.initial_trunk),
            "start_epoch": self.start_epoch,
            "previous": dict(self.previous),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.above = dict(state_dict.get("above", {}))
        self.initial = dict(state_dict.get("initial", {}))
        self.initial_trunk = dict(state_dict.get("initial_trunk", {}))
        self.start_epoch = state_dict.get("start_epoch")
        self.previous = dict(state_dict.get("previous", {}))
        self._start_gridding = None

    # ---- streaming: never-positive channels over the validation loop -----------------------------
    @override
    def reset_stream(self) -> None:
        self._positive = {}
        self._counted = {}
        self._entries = {}

    @override
    def stream_hooks(self, model: nn.Module) -> list[tuple[nn.Module, Callable]]:
        if not self.activation_stats:
            return []
        return [(find_layer(model, name), self._counter(name)) for name in self.layers]

    def _counter(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if self._counted.get(name, 0) >= self.stats_images:
                return
            self._counted[name] = self._counted.get(name, 0) + output.shape[0]
            self._entries[name] = self._entries.get(name, 0) + output[:, 0].numel()
            counts = positive_counts(output)
            self._positive[name] = (
                self._positive[name] + counts if name in self._positive else counts
            )

        return hook

    # ---- analysis --------------------------------------------------------------------------------
    @override
    @override
    def estimate_forwards(
        self, image_shape: tuple[int, ...], world_size: int, masks: bool
    ) -> float:
        # gridding: the probes' forward to conv2 and the projections of its strongest units, now and
        # (once) at the start; the filter statistics read weights only
        return 2.0 * self.num_probes

    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult:
        figures: dict[str, Any] = {}
        scalars: dict[str, float] = {}
        for name in self.layers:
            conv = find_layer(model, name)
            positive = self._positive.get(name) if self.activation_stats else None
            observed = None
            if positive is not None:  # counts per channel and the entries counted, over ranks
                entries = positive.new_tensor([self._entries.get(name, 0)])
                summed = ctx.all_gather(torch.cat([positive, entries])[None]).sum(0)
                positive, observed = summed[:-1], int(summed[-1])
            stride, step = _stride(conv), self._step(model, name)
            report = filter_health(
                conv.weight,
                stride,
                step=step,
                initial=self.initial.get(name),
                positive=positive,
                observed=observed,
                previous=self.previous.get(name),
                **self.options,
            )
            self.previous[name] = report.status.cpu()
            title = f"{name}: {len(report.rms)} filters {report.kernel}x{report.kernel}, stride {stride}"
            shown, view = shown_filters(getattr(model, "features", None), name, conv.weight)
            figures[f"{name}/filters"] = Figure(
                filter_grid(shown, report, title, self.ncols, view=view), _summary(name, report)
            )
            figures[f"{name}/spectra"] = Figure(
                spectra_figure(conv.weight, stride, step, f"{name} spectra", self.ncols),
                f"{name} power spectra in cycles per input pixel; cyan: Nyquist of stride {stride}",
            )
            scalars.update({f"{name}/{k}": v for k, v in report.scalars().items()})
        trunk = self._trunk(model)
        if trunk is not None:
            scalars.update(self._gridding_scalars(trunk, probe, figures))
        self._alert(scalars, ctx)
        return VizResult(figures=figures, scalars=scalars)

    def _trunk(self, model: nn.Module) -> nn.Sequential | None:
        """``model.features`` up to and including ``gridding_layer`` (None when off or absent)."""
        features = getattr(model, "features", None)
        if self.gridding_layer is None or not isinstance(features, nn.Sequential):
            return None
        return features[: resolve_layer(features, self.gridding_layer) + 1]

    def _step(self, model: nn.Module, name: str) -> float:
        """Input pixels between the taps of layer ``name``: the cumulative stride below it."""
        features = getattr(model, "features", None)
        if isinstance(features, nn.Sequential) and name in features._modules:
            return receptive_field(features, name)[1] / _stride(features._modules[name])
        return 1.0

    def _gridding_scalars(
        self, trunk: nn.Sequential, probe: Probe, figures: dict[str, Any]
    ) -> dict[str, float]:
        layer = self.gridding_layer
        assert layer is not None
        size, rf_stride, offset = receptive_field(trunk, layer)
        period = int(rf_stride // _stride(trunk._modules[layer]))
        score, crops = gridding_of(trunk, layer, probe.images, self.gridding_channels, period)
        out = {f"{layer}/gridding": score}
        if self.initial_trunk:
            if self._start_gridding is None:
                start = copy.deepcopy(trunk)
                start.load_state_dict(self.initial_trunk)
                self._start_gridding, _ = gridding_of(
                    start, layer, probe.images, self.gridding_channels, period
                )
            out[f"{layer}/gridding_start"] = self._start_gridding
            out[f"{layer}/gridding_rel"] = score / self._start_gridding
        tiles = [_enlarged(symmetric_to_uint8(c), 96) for c in crops[:16]]
        figures[f"{layer}/projections"] = Figure(
            title_bar(
                grid(tiles, ncols=8),
                f"{layer} deconvnet projections, cropped to the {size} px receptive field",
                f"Gridding = power at the harmonics of the {period} px cumulative stride over "
                f"their neighbours (1 = none): {score:.2f} now"
                + (f", {self._start_gridding:.2f} at the start." if self.initial_trunk else "."),
            ),
            f"{layer} projections, gridding {score:.2f}",
        )
        return out

    # ---- alerts ----------------------------------------------------------------------------------
    def _alert(self, scalars: dict[str, float], ctx: AnalysisContext) -> None:
        """Warn once when a watched value rises above its threshold after the warm-up."""
        if ctx.epoch >= self.warmup_epochs:
            raise_alerts(self.name, scalars, self.alert_thresholds, self.above, ctx.epoch, ctx.rank)


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """``model.layer(name)`` when the model has it, else the module called ``name``."""
    if hasattr(model, "layer"):
        return model.layer(name)
    modules = dict(model.named_modules())
    if name not in modules:
        raise KeyError(f"no layer {name!r}; valid names: {', '.join(n for n in modules if n)}")
    return modules[name]


def _summary(name: str, report: FilterReport) -> str:
    counts = report.counts()
    return f"{name}: " + ", ".join(f"{v} {k}" for k, v in counts.items())


def _enlarged(img: np.ndarray, side: int) -> np.ndarray:
    factor = max(1, side // max(img.shape[:2]))
    return resize(img, (img.shape[0] * factor, img.shape[1] * factor))


def _stride(conv: nn.Module) -> int:
    s = conv.stride
    return int(s[0] if isinstance(s, tuple) else s)
