"""The cost records of the visual callbacks and the ledger's rows, lines and scalars (no Lightning).

Each callback records its own cost on its own rank (``COSTS``); ``ledger.CostLedger`` gathers the
ranks' records once per analysed epoch and reports them with the functions here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch


@dataclass
class Cost:
    """One callback's cost on one rank in one epoch: seconds, FLOPs counted, FLOPs of one forward."""

    seconds: float = 0.0
    flops: int = 0
    unit: int = 0

    @property
    def forwards(self) -> float:
        """Forward-pass equivalents of the model at the probe images' size."""
        return self.flops / self.unit if self.unit else 0.0


class CostRecorder:
    """Costs recorded by the callbacks of this process since the last ``take`` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._costs: dict[str, Cost] = {}

    def record(self, name: str, seconds: float, flops: int = 0, unit: int = 0) -> None:
        with self._lock:
            c = self._costs.setdefault(name, Cost())
            c.seconds += seconds
            c.flops += flops
            c.unit = unit or c.unit

    def take(self) -> dict[str, Cost]:
        """The costs recorded since the last ``take``, in the order the callbacks ran."""
        with self._lock:
            costs, self._costs = self._costs, {}
        return costs


COSTS = CostRecorder()


@dataclass
class LedgerRow:
    """One callback's line of the ledger, over all ranks."""

    name: str
    seconds: float  # the slowest rank
    forwards: float  # the busiest rank
    forwards_all: float  # summed over ranks
    share: float  # forwards / the training epoch's forward passes on one rank
    time_share: float  # seconds / the training epoch's seconds


def ledger_rows(
    names: list[str], per_rank: torch.Tensor, train_forwards: float, train_seconds: float
) -> list[LedgerRow]:
    """Rows from ``per_rank`` (R, N, 2): seconds and forward passes of each callback on each rank."""
    rows = []
    for i, name in enumerate(names):
        seconds, forwards = per_rank[:, i, 0], per_rank[:, i, 1]
        busiest = float(forwards.max())
        rows.append(
            LedgerRow(
                name,
                float(seconds.max()),
                busiest,
                float(forwards.sum()),
                busiest / train_forwards if train_forwards > 0 else float("nan"),
                float(seconds.max()) / train_seconds if train_seconds > 0 else float("nan"),
            )
        )
    return rows


def ledger_line(epoch: int, rows: list[LedgerRow]) -> str:
    """``epoch 3: analyses 4.2 s, 310 forwards a rank, 1.2% of training (deconv 1.1 s 20 fw, ...)``."""
    total = total_row(rows)
    parts = ", ".join(f"{r.name} {r.seconds:.1f} s {r.forwards:.0f} fw" for r in rows)
    share = f", {percent(total.share)} of training" if total.share == total.share else ""
    return (
        f"epoch {epoch}: analyses {total.seconds:.1f} s, {total.forwards:.0f} forwards a rank"
        f"{share} ({parts})"
    )


def ledger_scalars(rows: list[LedgerRow], train_forwards: float, train_seconds: float) -> dict:
    """``<callback>/<seconds|forwards|share>``; ``total/`` adds ``forwards_all`` and ``time_share``."""
    scalars: dict[str, float] = {}
    every = ("seconds", "forwards", "share")
    for r, keys in [
        *((r, every) for r in rows),
        (total_row(rows), (*every, "forwards_all", "time_share")),
    ]:
        for key in keys:
            value = getattr(r, key)
            if value == value:  # no share without a training epoch (zflight visualize)
                scalars[f"{r.name}/{key}"] = value
    if train_forwards > 0:
        scalars["train/forwards"] = train_forwards
        scalars["train/seconds"] = train_seconds
    return scalars


def total_row(rows: list[LedgerRow]) -> LedgerRow:
    """All analyses together: times add up, and so do forward passes of one rank."""
    return LedgerRow(
        "total",
        sum(r.seconds for r in rows),
        sum(r.forwards for r in rows),
        sum(r.forwards_all for r in rows),
        sum(r.share for r in rows),
        sum(r.time_share for r in rows),
    )


def percent(share: float) -> str:
    return f"{100 * share:.2g}%" if share < 0.1 else f"{100 * share:.0f}%"
