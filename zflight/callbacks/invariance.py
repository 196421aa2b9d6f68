"""Invariance: the paper's Fig. 5 per epoch, feature distance and P(true) under translation,
scaling and rotation, drawn as line plots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from typing_extensions import override

from zflight.analysis.images import caption, denormalize, grid, title_bar, to_uint8, vstack
from zflight.analysis.invariance import InvarianceCurve, invariance_curves, transform_images
from zflight.callbacks.base import AnalysisContext, VisualizationCallback
from zflight.callbacks.results import Figure, Probe, VizResult

_XLABELS = {
    "translate": "vertical shift (fraction of height)",
    "scale": "scale factor",
    "rotate": "rotation (degrees)",
}


class Invariance(VisualizationCallback):
    """Translate (vertically), scale and rotate a few probe images; plot per transformation the
    normalised distance of each layer's feature vector from the original's, and P(true class).

    Figures, titled and captioned: ``curves`` (columns: transformations; top: distances, a
    colour per layer and a line per image; bottom: P(true), a line per image, legends on the
    right of the plots, outside them; images named by probe number and class) and ``examples``
    (the first probe image under every transform value; it depends only on the probe set, so it
    is logged once, at the first run of a training, not every epoch). Scalars ``<transform>/<layer>_auc`` and
    ``<transform>/p_true_auc``: the area under each curve with the values rescaled to [0, 1],
    i.e. its mean height, averaged over the images. The defaults (4 images, 3 x 9 values)
    cost about 0.7 CPU-seconds per call at 64 px, most of it drawing the plot.

    Args:
        layers: layer names whose output is compared (``model.layer(name)``).
        num_images: how many probe images (the first ones) to transform.
        translate, scale, rotate: (start, stop) range of each transformation (fraction of the
            height, factor, degrees); ``None`` leaves a transformation out.
        num_values: evenly spaced values per range, both ends included.
        **kwargs: schedule and probe options of ``VisualizationCallback``.

    Example:
        >>> Invariance(layers=["conv1", "fc7"], rotate=None, num_values=5)
    """

    name = "invariance"

    def __init__(
        self,
        layers: Sequence[str] = ("conv1", "conv5", "fc7"),
        num_images: int = 4,
        translate: tuple[float, float] | None = (-0.25, 0.25),
        scale: tuple[float, float] | None = (1.0, 1.8),
        rotate: tuple[float, float] | None = (0.0, 360.0),
        num_values: int = 9,
        **kwargs,
    ) -> None:
        kwargs.setdefault("every_n_epochs", 2)
        super().__init__(**kwargs)
        self.layers = list(layers)
        self.num_images = num_images
        ranges = {"translate": translate, "scale": scale, "rotate": rotate}
        self.transforms = {
            k: torch.linspace(r[0], r[1], num_values).tolist()
            for k, r in ranges.items()
            if r is not None
        }
        if not self.transforms:
            raise ValueError("Invariance needs at least one of translate, scale, rotate")
        self._examples_logged = False

    @override
    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult:
        x, labels = probe.images[: self.num_images], probe.labels[: self.num_images]
        layers = {name: model.layer(name) for name in self.layers}
        with ctx.autocast():
            curves = invariance_curves(model, x, labels, layers, self.transforms)
        scalars = {}
        for curve in curves:
            for name, dist in curve.distances.items():
                scalars[f"{curve.kind}/{name}_auc"] = curve.area(dist).mean().item()
            scalars[f"{curve.kind}/p_true_auc"] = curve.area(curve.p_true).mean().item()
        names = [
            probe.class_names[int(t)] if int(t) < len(probe.class_names) else str(int(t))
            for t in labels
        ]
        image_names = [f"#{i} {name}" for i, name in enumerate(names)]  # two squares stay two
        layers = ", ".join(self.layers)
        kinds = ", ".join(self.transforms)
        curves_text = (
            f"Invariance at epoch {ctx.epoch} of {len(names)} probe images ({', '.join(names)}) "
            f"under {kinds}: top, the distance of the {layers} features from the untransformed "
            "image's, relative to its size (a colour per layer, a line per image); bottom, "
            "p(true class) (a line per image)."
        )
        examples_text = (
            f"The first probe image ({names[0]}) under each transformation value used for the "
            "invariance curves (rows: " + kinds + ")."
        )
        figures = {
            "curves": Figure(
                title_bar(plot_curves(curves, image_names), f"Invariance, epoch {ctx.epoch}"),
                curves_text,
            )
        }
        if not self._examples_logged:  # the same picture every epoch: once is enough
            figures["examples"] = Figure(
                title_bar(self._examples(probe), "Transformations of the first probe image"),
                examples_text,
            )
            self._examples_logged = True
        return VizResult(figures=figures, scalars=scalars)

    def _examples(self, probe: Probe) -> np.ndarray:
        rows = []
        for kind, values in self.transforms.items():
            moved = transform_images(probe.images[:1], kind, values)[:, 0]
            pics = denormalize(moved.float(), probe.mean, probe.std)
            tiles = [caption(to_uint8(p, 0.0, 1.0), f"{v:g}") for p, v in zip(pics, values)]
            rows.append(caption(grid(tiles, ncols=len(values), pad=1), _XLABELS.get(kind, kind)))
        return vstack(rows, pad=2)


def plot_curves(
    curves: Sequence[InvarianceCurve], labels: Sequence[str], dpi: int = 72
) -> np.ndarray:
    """The curves (``curves_figure``) as a uint8 HxWx3 array."""
    fig = curves_figure(curves, labels, dpi)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def curves_figure(curves: Sequence[InvarianceCurve], labels: Sequence[str], dpi: int = 72) -> Any:
    """The curves as a matplotlib figure on an Agg canvas (no pyplot state).

    One column per transformation; top row: normalised feature distance, one colour per layer,
    one line per image; bottom row: P(true class), one line per image. Two rows of axes keep
    the drawing cheap (matplotlib's cost grows with the number of axes).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(3.4 * len(curves) + 1.4, 5.0), dpi=dpi)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    axes = fig.subplots(2, len(curves), squeeze=False, sharex="col")
    colours = [f"C{i}" for i in range(10)]
    for c, curve in enumerate(curves):
        v = curve.values.numpy()
        top, bottom = axes[0][c], axes[1][c]
        for k, (name, dist) in enumerate(curve.distances.items()):
            d = dist.cpu().numpy()
            for i in range(d.shape[1]):
                top.plot(
                    v,
                    d[:, i],
                    color=colours[k % 10],
                    lw=1.2,
                    alpha=0.8,
                    label=name if i == 0 else None,
                )
        p = curve.p_true.cpu().numpy()
        for i in range(p.shape[1]):
            bottom.plot(
                v,
                p[:, i],
                color=colours[i % 10],
                lw=1.2,
                label=labels[i] if i < len(labels) else None,
            )
        top.set_title(curve.kind)
        bottom.set_ylim(-0.03, 1.03)
        bottom.set_xlabel(_XLABELS.get(curve.kind, curve.kind))
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_locator(MaxNLocator(4))
    axes[0][0].set_ylabel("feature distance / |original|")
    axes[1][0].set_ylabel("P(true class)")
    # legends to the right of the last column, beside their row, never over a curve
    right = 1.0 - 1.4 / (3.4 * len(curves) + 1.4)
    for row in (0, 1):
        axes[row][-1].legend(
            fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False
        )
    fig.subplots_adjust(left=0.07, right=right, bottom=0.11, top=0.93, hspace=0.12, wspace=0.2)
    return fig
