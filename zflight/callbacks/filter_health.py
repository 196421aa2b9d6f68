"""FilterHealth: the paper's Fig. 6 diagnosis (dead, aliased, duplicate filters; mid-band coverage;
gridding in layer 2) made automatic every N epochs, with a warning when a layer degrades."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from zflight.analysis.deconvnet import Deconvnet, resolve_layer
from zflight.analysis.filters import (
    STATUSES,
    FilterReport,
    filter_health,
    gridding_scores,
    positive_counts,
    power_spectra,
)
from zflight.analysis.images import add_border, colormap, grid, resize, symmetric_to_uint8, to_uint8
from zflight.callbacks.base import AnalysisContext, VisualizationCallback
from zflight.callbacks.results import Figure, Probe, VizResult

STATUS_COLOURS = {
    "ok": (40, 160, 40),
    "dead": (0, 0, 0),
    "aliased": (210, 40, 40),
    "duplicate": (240, 160, 0),
}
NYQUIST_COLOUR = (0, 220, 255)
DEFAULT_ALERTS = {"dead": 0.2, "aliased": 0.5, "duplicate": 0.2}


class FilterHealth(VisualizationCallback):
    """Filter grids, log spectra and health scalars of chosen conv layers, every N epochs.

    Figures per layer: ``<layer>/filters`` (every filter on one shared scale, so dead filters look
    flat, framed by status: green ok, black dead, red aliased, orange duplicate) and
    ``<layer>/spectra`` (log power on one shared 40 dB scale, the Nyquist square of the layer's
    stride in cyan). Scalars per layer: ``dead``, ``aliased``, ``duplicate``, ``anti_pairs``,
    ``mid_band``, ``mid_band_energy``, ``aliasing_mean``, ``effective_rank``, ``at_radius`` and,
    from the validation loop, ``never_active``. With ``gridding_layer``, the scalar
    ``<gridding_layer>/gridding`` scores the deconvnet projections of that layer's strongest
    channels at conv1's stride harmonics, and ``<gridding_layer>/projections`` shows 16 of them.

    Args:
        layers: conv layers to diagnose (names for ``model.layer`` or ``named_modules``).
        dead_fraction, alias_threshold, duplicate_threshold, radius, n_fft: see ``filter_health``.
        alert_thresholds: metric -> fraction; when a layer's fraction rises above it after
            ``warmup_epochs`` epochs, a rank-zero warning (and a W&B alert when a run is online).
        warmup_epochs: no alerts before this epoch (random filters all look aliased).
        gridding_layer: layer whose deconvnet projections are scored for gridding (None: off;
            needs the model's conv trunk as an ``nn.Sequential`` called ``features``).
        gridding_channels: strongest channels projected per probe image.
        activation_stats: count never-positive channels over the validation loop.
        stats_images: stop counting after this many validation images per rank (a sample is
            enough to find never-active channels; keeps the cost flat on large validation sets).
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
        alias_threshold: float = 0.5,
        duplicate_threshold: float = 0.9,
        radius: float = 0.1,
        n_fft: int = 64,
        alert_thresholds: Mapping[str, float] | None = None,
        warmup_epochs: int = 5,
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
            "alias_threshold": alias_threshold,
            "duplicate_threshold": duplicate_threshold,
            "radius": radius,
            "n_fft": n_fft,
        }
        self.alert_thresholds = dict(
            DEFAULT_ALERTS if alert_thresholds is None else alert_thresholds
        )
        self.warmup_epochs = warmup_epochs
        self.gridding_layer = gridding_layer
        self.gridding_channels = gridding_channels
        self.activation_stats = activation_stats
        self.stats_images = stats_images
        self.ncols = ncols
        self.above: dict[str, bool] = {}
        self._positive: dict[str, torch.Tensor] = {}
        self._counted: dict[str, int] = {}

    # ---- streaming: never-positive channels over the validation loop -----------------------------
    @override
    def reset_stream(self) -> None:
        self._positive = {}
        self._counted = {}

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
            counts = positive_counts(output)
            self._positive[name] = (
                self._positive[name] + counts if name in self._positive else counts
            )

        return hook

    # ---- analysis --------------------------------------------------------------------------------
    @override
    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult:
        figures: dict[str, Any] = {}
        scalars: dict[str, float] = {}
        for name in self.layers:
            conv = find_layer(model, name)
            positive = self._positive.get(name) if self.activation_stats else None
            if positive is not None:
                positive = ctx.all_gather(positive[None]).sum(0)
            report = filter_health(conv.weight, _stride(conv), positive=positive, **self.options)
            figures[f"{name}/filters"] = Figure(
                filter_grid(conv.weight, report, self.ncols), _summary(name, conv, report)
            )
            figures[f"{name}/spectra"] = Figure(
                spectra_grid(conv.weight, _stride(conv), self.ncols),
                f"{name} log power (40 dB), cyan: Nyquist square |f| <= 1/{2 * _stride(conv)}",
            )
            scalars.update({f"{name}/{k}": v for k, v in report.scalars().items()})
        if self.gridding_layer is not None and isinstance(
            getattr(model, "features", None), nn.Sequential
        ):
            score, projections = self._gridding(model, probe)
            scalars[f"{self.gridding_layer}/gridding"] = score
            figures[f"{self.gridding_layer}/projections"] = Figure(
                grid([_enlarged(symmetric_to_uint8(p), 128) for p in projections[:16]], ncols=8),
                f"{self.gridding_layer} deconvnet projections, gridding {score:.3f}",
            )
        self._alert(scalars, ctx)
        return VizResult(figures=figures, scalars=scalars)

    def _gridding(self, model: nn.Module, probe: Probe) -> tuple[float, torch.Tensor]:
        """Mean gridding score of the projections of each probe image's strongest channels."""
        trunk = model.features
        end = resolve_layer(trunk, self.gridding_layer)
        acts = trunk[: end + 1](probe.images.to(next(trunk.parameters()).dtype))
        k = min(self.gridding_channels, acts.shape[1])
        channels = acts.flatten(2).amax(2).topk(k, dim=1).indices.flatten()
        images = probe.images.repeat_interleave(k, dim=0)
        projections = Deconvnet(trunk).project(images, self.gridding_layer, channels)
        stride = _stride(next(m for m in trunk.modules() if isinstance(m, nn.Conv2d)))
        scores = gridding_scores(projections, stride)
        active = projections.flatten(1).abs().amax(1) > 0
        score = float(scores[active].mean()) if bool(active.any()) else 0.0
        return score, projections

    # ---- alerts ----------------------------------------------------------------------------------
    def _alert(self, scalars: dict[str, float], ctx: AnalysisContext) -> None:
        """Warn once when a watched fraction rises above its threshold after the warm-up."""
        if ctx.epoch < self.warmup_epochs:
            return
        for key, value in scalars.items():
            metric = key.rsplit("/", 1)[-1]
            if metric not in self.alert_thresholds:
                continue
            above = value > self.alert_thresholds[metric]
            if above and not self.above.get(key, False):
                text = (
                    f"{self.name}/{key} = {value:.3f} exceeds {self.alert_thresholds[metric]} "
                    f"at epoch {ctx.epoch}"
                )
                rank_zero_warn(text)
                if ctx.rank == 0:
                    _wandb_alert(f"filter health: {key}", text)
            self.above[key] = above

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "above": dict(self.above)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.above = dict(state_dict.get("above", {}))


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """``model.layer(name)`` when the model has it, else the module called ``name``."""
    if hasattr(model, "layer"):
        return model.layer(name)
    modules = dict(model.named_modules())
    if name not in modules:
        raise KeyError(f"no layer {name!r}; valid names: {', '.join(n for n in modules if n)}")
    return modules[name]


def filter_grid(
    weight: torch.Tensor, report: FilterReport, ncols: int = 12, tile: int = 40
) -> np.ndarray:
    """Every filter on the layer's shared symmetric scale (0 is gray), framed by its status colour.

    RGB for 3 input channels; otherwise the input channel with the most energy, in gray.
    """
    w = weight.detach().float().cpu()
    scale = float(w.abs().max()) or 1.0
    if w.shape[1] != 3:
        strongest = w.pow(2).sum((2, 3)).argmax(1)
        w = w[torch.arange(w.shape[0]), strongest][:, None]
    factor = max(1, round(tile / max(w.shape[-2:])))
    statuses = report.status.tolist()
    tiles = []
    for f, s in zip(w, statuses):
        img = to_uint8(f.permute(1, 2, 0).numpy(), -scale, scale)
        img = resize(img, (img.shape[0] * factor, img.shape[1] * factor))
        tiles.append(add_border(img, STATUS_COLOURS[STATUSES[s]], 3))
    return grid(tiles, ncols)


def spectra_grid(
    weight: torch.Tensor,
    stride: int,
    ncols: int = 12,
    n_fft: int = 32,
    factor: int = 2,
    range_db: float = 40.0,
) -> np.ndarray:
    """Each filter's log power spectrum (DC centred) on one shared scale, Nyquist square drawn."""
    power = torch.fft.fftshift(power_spectra(weight, n_fft), dim=(-2, -1)).cpu()
    logp = 10 * torch.log10(power.clamp_min(1e-30))
    hi = float(logp.max())
    half = n_fft // (2 * stride)
    lo_px, hi_px = (n_fft // 2 - half) * factor, (n_fft // 2 + half + 1) * factor - 1
    tiles = []
    for p in logp:
        img = resize(colormap(p, "magma", hi - range_db, hi), (n_fft * factor,) * 2).copy()
        if stride > 1:
            img[[lo_px, hi_px], lo_px : hi_px + 1] = NYQUIST_COLOUR
            img[lo_px : hi_px + 1, [lo_px, hi_px]] = NYQUIST_COLOUR
        tiles.append(img)
    return grid(tiles, ncols)


def _summary(name: str, conv: nn.Module, report: FilterReport) -> str:
    k, n = report.kernel, len(report.rms)
    counts = {s: int((report.status == i).sum()) for i, s in enumerate(STATUSES)}
    text = ", ".join(f"{counts[s]} {s}" for s in STATUSES)
    return (
        f"{name} {n}x{k}x{k}/{_stride(conv)}: {text} (green ok, black dead, red aliased, "
        f"orange duplicate)"
    )


def _enlarged(img: np.ndarray, side: int) -> np.ndarray:
    factor = max(1, side // max(img.shape[:2]))
    return resize(img, (img.shape[0] * factor, img.shape[1] * factor))


def _stride(conv: nn.Module) -> int:
    s = conv.stride
    return int(s[0] if isinstance(s, tuple) else s)


def _wandb_alert(title: str, text: str) -> None:
    """A W&B alert when a run is online; never raises (offline, disabled or no wandb: nothing)."""
    try:
        import wandb

        run = wandb.run
        if run is not None and not run.offline and not run.disabled:
            run.alert(title=title, text=text)
    except Exception as exc:
        rank_zero_warn(f"could not send a W&B alert: {exc!r}")
