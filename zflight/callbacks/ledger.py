"""The cost ledger: what every visual callback cost this epoch, in seconds and in forward passes of
the model at the probe images' size, beside the training epoch it rode on.

Each callback records its own cost on its own rank (``COSTS``: the analysis, the writing and its
validation-time hooks, timed; its matrix products and convolutions counted by
``zflight.analysis.cost.CountFlops``). ``CostLedger`` gathers the records of every rank once per
analysed epoch and reports, on rank 0, per callback: seconds (the slowest rank), forward passes on
one rank (the busiest) and over all ranks, and the share of the training epoch on one rank, as
forward passes (training = forward + backward, 3 forwards an image) and as time. They go to the
console's epoch line, to ``scalars.jsonl`` and the loggers as ``cost/<callback>/<what>``, and to a
chart ``cost/ledger``. With ``budget`` (a share of the training epoch) it also sizes the schedule at
start-up (``zflight.callbacks.budget``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from zflight.analysis.cost import training_forwards
from zflight.callbacks.budget import fit_budget
from zflight.callbacks.costs import (
    COSTS,
    Cost,
    LedgerRow,
    ledger_line,
    ledger_rows,
    ledger_scalars,
    percent,
    total_row,
)
from zflight.callbacks.ledger_chart import ledger_chart
from zflight.callbacks.results import Figure, VizResult
from zflight.callbacks.sinks import write_outputs


class CostLedger(pl.Callback):
    """Gathers the callbacks' costs after each analysed validation and reports them (see module).

    Args:
        write: prints the epoch line (rank 0); ``None`` prints nothing.
        budget: the analyses' share of the training epoch (forward passes, on one rank) that the
            schedule is sized to at start-up; ``None``: no budget.
        backward_factor: a training image's backward pass in forward passes (2: input and weight
            gradients).
    """

    def __init__(
        self,
        write: Callable[[str], None] | None = None,
        budget: float | None = None,
        backward_factor: float = 2.0,
    ) -> None:
        if budget is not None and not 0 < budget:
            raise ValueError(
                f"callbacks.budget must be a share of the training epoch > 0; got {budget}"
            )
        self.write, self.budget, self.backward_factor = write, budget, backward_factor
        self._epoch_start = 0.0
        self._train_seconds = 0.0
        self._train_images = 0
        self.rows: list[LedgerRow] = []

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.budget is None:
            return
        line = fit_budget(trainer, pl_module, self.budget, self.backward_factor)
        if line and trainer.is_global_zero and self.write is not None:
            self.write(line)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._train_seconds = 0.0
        self._train_images = 0

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._train_images += _batch_size(batch)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._train_seconds = time.perf_counter() - self._epoch_start
        COSTS.take()  # nothing left over from an epoch that was not reported

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        costs = COSTS.take()
        names = [
            cb.name
            for cb in trainer.callbacks
            if getattr(cb, "_should_run", None) and cb._should_run(trainer)
        ]
        if not names:  # the same decision on every rank: no collective
            return
        local = torch.tensor(
            [[costs.get(n, Cost()).seconds, costs.get(n, Cost()).forwards] for n in names],
            dtype=torch.float64,
        )
        per_rank = local[None]
        if trainer.world_size > 1:
            gathered = trainer.strategy.all_gather(local.float().to(pl_module.device))
            per_rank = gathered.reshape(trainer.world_size, len(names), 2).double().cpu()
        train_forwards = training_forwards(self._train_images, self.backward_factor)
        self.rows = ledger_rows(names, per_rank, train_forwards, self._train_seconds)
        if not trainer.is_global_zero:
            return
        if self.write is not None:
            self.write(ledger_line(trainer.current_epoch, self.rows))
        scalars = ledger_scalars(self.rows, train_forwards, self._train_seconds)
        chart = Figure(
            ledger_chart(self.rows, trainer.current_epoch, self.budget),
            ledger_caption(self.rows, trainer.current_epoch, trainer.world_size, self.budget),
        )
        write_outputs(trainer, "cost", VizResult(figures={"ledger": chart}, scalars=scalars))


def ledger_caption(rows: list[LedgerRow], epoch: int, world_size: int, budget: float | None) -> str:
    total = total_row(rows)
    text = (
        f"Cost of the analyses at epoch {epoch}, per callback: forward passes of the model at the "
        f"probe size on the busiest of {world_size} rank{'s' if world_size > 1 else ''}, as a share "
        "of the training epoch's forward and backward passes on one rank (a backward = 2 forwards), "
        f"and seconds as a share of the training epoch's time. All together: "
        f"{total.forwards:.0f} forwards, {total.seconds:.1f} s"
    )
    if total.share == total.share:
        text += f", {percent(total.share)} of the training epoch"
    if budget is not None:
        text += f" (budget {percent(budget)})"
    return text + "."


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    try:
        return len(first)
    except TypeError:
        return 0
