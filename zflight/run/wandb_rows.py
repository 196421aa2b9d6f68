"""W&B with one history row per epoch, its files inside the run directory, and one learning rate.

Lightning's ``WandbLogger`` calls ``wandb.log`` once per ``log_metrics``: every scalar batch,
picture and table becomes a row of its own, so W&B's ``_step`` (which its media slider follows)
advanced 30-odd times per epoch and an epoch's pictures sat at other steps than its validation
metrics. ``EpochRowWandbLogger`` gathers everything of an epoch (training scalars, validation
metrics, the learning rate, the callbacks' scalars, pictures and tables) and writes it as one row:
``_step`` is the epoch, and ``trainer/global_step`` in that row is the step of the epoch's
validation metrics, the x axis of every line chart.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from typing_extensions import override

STEP = "trainer/global_step"
# Keys logged at several steps of an epoch whose W&B value is their mean over the epoch (the
# training loss and accuracy every ``log_every_n_steps`` batches); every other key keeps its last.
MEAN_PREFIX = "train/"
LR_KEY = "optim/lr"


def wandb_dirs(run_dir: Path) -> dict[str, str]:
    """W&B's data, artifact and cache folders inside the run directory, so that a copied run
    directory holds everything ``wandb sync`` uploads (the tables' pictures are staged there)."""
    base = run_dir / "wandb"
    return {
        "WANDB_DATA_DIR": str(base / "data"),
        "WANDB_ARTIFACT_DIR": str(base / "artifacts"),
        "WANDB_CACHE_DIR": str(base / "cache"),
    }


def point_wandb_into(run_dir: Path) -> None:
    """Set W&B's folders (``wandb_dirs``) for this process before the run starts."""
    for name, path in wandb_dirs(run_dir).items():
        os.environ[name] = path
        Path(path).mkdir(parents=True, exist_ok=True)


def writer_idle() -> bool:
    """Whether the background writer has logged everything handed to it (a module function, not
    a lambda, so that the logger pickles for spawned processes)."""
    from zflight.callbacks.sinks import WRITER

    return not WRITER.pending()


def merge_epoch(values: dict[str, list[Any]]) -> dict[str, Any]:
    """One row from the values each key received during an epoch: numbers under ``train/`` are
    averaged, everything else (pictures, tables, validation metrics, the step) keeps its last."""
    row = {}
    for key, seen in values.items():
        numbers = [v for v in seen if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if key.startswith(MEAN_PREFIX) and len(numbers) == len(seen) > 1:
            row[key] = sum(numbers) / len(numbers)
        else:
            row[key] = seen[-1]
    return row


class EpochRowWandbLogger(WandbLogger):
    """``WandbLogger`` that writes one W&B history row per epoch.

    Metrics are sorted into their epoch by the ``epoch`` Lightning and the callbacks log with them
    (a metric without one joins the latest epoch). The rows of past epochs are written once
    ``ready()`` says no output of theirs is still on its way (the background writer is idle) and a
    later epoch has begun; ``commit_rows()`` writes every row, and runs when the logger finalizes.

    Args:
        ready: whether every output of past epochs has been logged (default: the background
            writer is idle, ``writer_idle``).
        **kwargs: ``WandbLogger``'s arguments.
    """

    def __init__(self, *args: Any, ready: Callable[[], bool] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ready = ready or writer_idle
        self._rows: dict[int, dict[str, list[Any]]] = {}
        self._latest = -1

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        epoch = metrics.get("epoch", max(self._latest, 0))
        epoch = int(epoch) if isinstance(epoch, (int, float)) else max(self._latest, 0)
        if epoch < self._latest and epoch not in self._rows:  # its row is written: a row of its own
            self._log_row(epoch, dict(metrics, **({STEP: step} if step is not None else {})))
            return
        self._latest = max(self._latest, epoch)
        row = self._rows.setdefault(epoch, {})
        for key, value in metrics.items():
            row.setdefault(key, []).append(value)
        if step is not None:
            row.setdefault(STEP, []).append(step)
        if self._ready():
            self.commit_rows(before=self._latest)

    @rank_zero_only
    def commit_rows(self, before: int | None = None) -> None:
        """Write the rows of the epochs before ``before`` (all when None), oldest first."""
        for epoch in sorted(self._rows):
            if before is not None and epoch >= before:
                break
            values = self._rows.pop(epoch)
            row = merge_epoch(values)
            if STEP in values:  # the x axis of the line charts: the epoch's validation step
                row[STEP] = max(values[STEP])
            self._log_row(epoch, row)

    def _log_row(self, epoch: int, row: dict[str, Any]) -> None:
        """Write one row; a failure to log never ends a run: the row goes again with its plain
        numbers only, and a warning names what was lost."""
        try:
            self.experiment.log(row)
        except Exception as exc:
            numbers = {k: v for k, v in row.items() if isinstance(v, (int, float, str))}
            lost = sorted(set(row) - set(numbers))
            rank_zero_warn(
                f"could not log epoch {epoch} to W&B ({exc!r}); logging its numbers without "
                f"{', '.join(lost) or 'anything else'}"
            )
            try:
                self.experiment.log(numbers)
            except Exception as again:
                rank_zero_warn(f"could not log epoch {epoch} to W&B at all: {again!r}")

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self.commit_rows()
        super().finalize(status)


class LearningRate(pl.Callback):
    """Logs the optimizer's learning rate as ``optim/lr`` every ``log_every_n_steps`` batches.

    Lightning's ``LearningRateMonitor`` logs one curve per parameter group; ours share one rate
    (weights with decay and biases without), so one curve says it.
    """

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.loggers or not trainer._logger_connector.should_update_logs:
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        for logger in trainer.loggers:
            logger.log_metrics({LR_KEY: lr, "epoch": trainer.current_epoch}, step=step)
