"""Figures of the ablation report: both arms' conv1 filters side by side as in the paper's Fig. 6,
and the health scalars per epoch."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zflight.analysis.filters import STATUSES, FilterReport
from zflight.analysis.images import grid, hstack, legend, title_bar, vstack
from zflight.callbacks.filter_figures import STATUS_COLOURS, STATUS_MEANING, filter_tiles

ARMS = {"alexnet_style": "AlexNet-style (conv1 11x11/4)", "zfnet": "ZFNet (conv1 7x7/2)"}
SHORT = {"alexnet_style": "AlexNet-style", "zfnet": "ZFNet"}
CURVES = (
    "conv1/untrained conv1/aliased conv1/band_mid conv1/cos_start conv1/aliasing_mean "
    "conv2/gridding".split()
)


def fig6(seed: int, measured: dict[str, dict[str, Any]], ncols: int = 6) -> np.ndarray:
    """The final conv1 filters of both arms of one seed side by side, framed by status (the
    statuses of the report), each arm's counts and median cosine to its start in its title."""
    panels = []
    for arm in ARMS:
        report: FilterReport = measured[arm]["reports"]["conv1"]
        tiles = filter_tiles(measured[arm]["weights"], report.status, tile=64)
        counts = report.counts()
        said = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        cos = (
            ""
            if report.cos_start is None
            else f"; median cos to start {float(report.cos_start.median()):.2f}"
        )
        panels.append(title_bar(grid(tiles, ncols), ARMS[arm], f"{said}{cos}"))
    body = hstack(panels, pad=24)
    entries = [(STATUS_COLOURS[s], STATUS_MEANING[s]) for s in STATUSES]
    return title_bar(
        vstack([body, legend(entries, body.shape[1])]),
        f"Final conv1 filters, seed {seed} (Zeiler & Fergus, Fig. 6 (b) and (c))",
        "Each filter contrast-normalised on its own, framed by its status.",
    )


def read_scalars(run_dir: Path, prefix: str = "filters/") -> dict[str, list[tuple[int, float]]]:
    """``<run_dir>/viz/scalars.jsonl`` as key -> [(epoch, value)], the callback's prefix removed."""
    series: dict[str, list[tuple[int, float]]] = {}
    path = run_dir / "viz" / "scalars.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        r = json.loads(line)
        if r["key"].startswith(prefix):
            series.setdefault(r["key"][len(prefix) :], []).append(
                (int(r["epoch"]), float(r["value"]))
            )
    return series


def curves_figure(
    results: dict[int, dict[str, dict[str, Any]]], accuracy: dict[Path, list[tuple[int, float]]]
) -> np.ndarray:
    """One chart per health scalar the callback logged (as it measured then) and validation
    top-1: both arms, one line per seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.ticker import MaxNLocator

    keys = [*CURVES, "val/acc1"]
    fig = MplFigure(figsize=(3.2 * 4, 2.6 * 2), dpi=90)
    FigureCanvasAgg(fig)
    colours = {"alexnet_style": "tab:red", "zfnet": "tab:blue"}
    for i, key in enumerate(keys):
        ax = fig.add_subplot(2, 4, i + 1)
        for seed, runs in sorted(results.items()):
            for arm in ARMS:
                run_dir = Path(runs[arm]["run_dir"])
                pts = (
                    accuracy.get(run_dir, [])
                    if key == "val/acc1"
                    else read_scalars(run_dir).get(key, [])
                )
                if pts:
                    ax.plot(
                        [e + 1 for e, _ in pts],
                        [v for _, v in pts],
                        color=colours[arm],
                        marker="o",
                        ms=3,
                        alpha=0.8,
                        label=SHORT[arm] if seed == min(results) else None,
                    )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if any(ax.get_legend_handles_labels()[0] for ax in fig.axes):
        next(ax for ax in fig.axes if ax.get_legend_handles_labels()[0]).legend(fontsize=7)
    fig.suptitle(
        "Per epoch, as the callback measured during training (one line per seed)", fontsize=10
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return np.asarray(Image.open(buf).convert("RGB"))
