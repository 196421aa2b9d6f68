"""The cost ledger as a picture: one bar per callback, its share of the training epoch."""

from __future__ import annotations

import numpy as np

from zflight.callbacks.costs import LedgerRow, total_row


def ledger_chart(
    rows: list[LedgerRow], epoch: int, budget: float | None, dpi: int = 72
) -> np.ndarray:
    """uint8 HxWx3: per callback and in total (the last bars), the share of the training epoch in
    forward passes (one rank) and in time, as horizontal bars in percent; the budget as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [*rows, total_row(rows)]
    fig = Figure(figsize=(7.0, 0.45 * len(rows) + 1.6), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    y = np.arange(len(rows))
    share = np.array([_finite(r.share) for r in rows]) * 100
    time_share = np.array([_finite(r.time_share) for r in rows]) * 100
    ax.barh(y - 0.2, share, 0.4, color="C0", label="forward passes")
    ax.barh(y + 0.2, time_share, 0.4, color="C1", label="time")
    ax.set_yticks(y, [f"{r.name} ({r.forwards:.0f} fw, {r.seconds:.1f} s)" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("% of the training epoch (one rank)")
    if budget is not None:
        ax.axvline(budget * 100, color="C3", ls="--", lw=1.2, label=f"budget (total) {budget:.1%}")
    total_fw, total_t = share[-1] / 100, time_share[-1] / 100
    ax.set_title(
        f"Analysis cost, epoch {epoch}\n{total_fw:.1%} of the training epoch in forward passes, "
        f"{total_t:.1%} in time",
        fontsize="medium",
    )
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _finite(value: float) -> float:
    return value if value == value else 0.0
