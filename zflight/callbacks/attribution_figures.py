"""Pictures of the attribution checks: deletion and insertion curves beside a random order, and
maps across randomisation depth."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from zflight.analysis.images import caption, colormap, grid, resize, with_colorbar


def plot_faithfulness(
    curves: dict[str, torch.Tensor],
    random: torch.Tensor,
    aucs: dict[str, tuple[float, float]],
    random_auc: tuple[float, float],
    dpi: int = 72,
) -> np.ndarray:
    """Two small panels, deletion and insertion: mean p(true class) against the share of pixels
    removed or revealed, one line per method (``curves[name]``: (2, N, steps + 1)), the random
    order dashed in grey; AUCs in the legend. uint8 HxWx3 (matplotlib's Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 2.7), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for d, (ax, mode) in enumerate(zip(axes, ("deletion", "insertion"))):
        steps = random.shape[-1] - 1
        x = np.linspace(0.0, 1.0, steps + 1)
        for k, (name, c) in enumerate(curves.items()):
            ax.plot(
                x,
                c[d].mean(0).cpu().numpy(),
                color=f"C{k}",
                lw=1.6,
                label=f"{name} {aucs[name][d]:.3f}",
            )
        ax.plot(
            x,
            random[d].mean(0).cpu().numpy(),
            color="0.45",
            lw=1.4,
            ls="--",
            label=f"random order {random_auc[d]:.3f}",
        )
        ax.set_title(f"{mode} (AUC, {'lower' if d == 0 else 'higher'} is better)", fontsize=9)
        ax.set_xlabel(f"share of pixels {'removed' if d == 0 else 'revealed'}", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper right" if d == 0 else "lower right")
    axes[0].set_ylabel("p(true class), mean", fontsize=8)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.17, top=0.88, wspace=0.08)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def randomisation_grid(
    pictures: Sequence[np.ndarray],
    depths: list[tuple[str, dict[str, torch.Tensor]]],
    rho: dict[str, list[torch.Tensor]],
    tile: int = 96,
) -> np.ndarray:
    """Rows: image x method; columns: the image, then the method's map with the layers down to
    each depth randomised (first column: the trained net), each scaled to its own largest
    magnitude, with its rank correlation to the trained map above it."""
    cells = []
    methods = list(depths[0][1])
    size = (tile, tile)
    for i, picture in enumerate(pictures):
        img = resize(picture, size)
        for name in methods:
            cells.append(caption(img, f"{name}"))
            for d, (layer, maps) in enumerate(depths):
                m = maps[name][i].float()
                hi = max(float(m.abs().max()), 1e-30)
                heat = resize(colormap(m.clamp_min(0), "inferno", 0.0, hi), size, nearest=False)
                label = "trained" if d == 0 else f"to {layer}: {float(rho[name][d][i]):+.2f}"
                cells.append(caption(heat, label))
    body = grid(cells, ncols=len(depths) + 1, pad=2)
    return with_colorbar(body, 0.0, 1.0, "inferno", "of max")
