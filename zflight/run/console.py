"""A quiet console for training runs: the progress bar, one line per analysis epoch, the summary.

Lightning's and W&B's notices on every start (the litlogger tip, ``limit_*_batches``, the W&B
"anonymous" warning, the model summary, a ``LeafSpec`` deprecation) are dropped; a warning that
means something is printed on a line of its own, ``warning: <message>``, above the progress bar
instead of glued to it. ``quiet_console`` is the one entry point.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from typing_extensions import override

from zflight.callbacks.sinks import ANALYSIS_TIMES

# Warnings that say nothing about this run: Lightning calling a deprecated torch API.
IGNORED_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)",)
# Lightning's start-up notices are INFO records of these loggers.
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def quiet_console(logger: Any = None, progress: bool = True) -> list[pl.Callback]:
    """Quieten the console; returns the callbacks to hand to the Trainer.

    Call before building the Trainer (its notices come from its constructor) and before the W&B
    run starts (``logger``: the run's logger, if any). The callbacks replace Lightning's model
    summary (whose FLOPs column is 0 for this model) with none, print the per-epoch analysis line
    and, with ``progress``, draw the progress bar (``ProgressBar``).
    """
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.showwarning = show_warning
    _quiet_wandb(logger)
    return [ModelSummary(max_depth=0), AnalysisLine(), *([ProgressBar()] if progress else [])]


def write_line(text: str, file: TextIO | None = None) -> None:
    """Print a line above any progress bar (tqdm clears and redraws it), never glued to it."""
    from tqdm import tqdm

    tqdm.write(text, file=file or sys.stdout)


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning``: ``warning: <message>`` on stderr, without the source line.

    Inside ``warnings.catch_warnings(record=True)`` (``pytest.warns``) the warning is recorded
    as usual instead.
    """
    record = getattr(warnings, "_showwarnmsg_impl", None)
    if isinstance(getattr(record, "__self__", None), list):  # a recording list's ``append``
        record(warnings.WarningMessage(message, category, filename, lineno, file, line))
        return
    write_line(f"warning: {message}", file or sys.stderr)


def _quiet_wandb(logger: Any) -> None:
    """Lightning's WandbLogger passes ``anonymous=None``, which W&B 0.31 warns about although it
    has no effect; drop it while the run has not started yet."""
    from lightning.pytorch.loggers import WandbLogger

    init = getattr(logger, "_wandb_init", None)
    if (
        isinstance(logger, WandbLogger)
        and isinstance(init, dict)
        and getattr(logger, "_experiment", None) is None
        and init.get("anonymous", False) is None
    ):
        del init["anonymous"]


def analysis_line(epoch: int, times: dict[str, float]) -> str:
    """``epoch 3: analyses 4.2 s (deconv 1.1, occlusion 0.9)``: total, then each in run order."""
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in times.items())
    return f"epoch {epoch}: analyses {sum(times.values()):.1f} s ({parts})"


class AnalysisLine(pl.Callback):
    """After a validation in which visual callbacks ran, prints how long they took (rank 0)."""

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        times = ANALYSIS_TIMES.take()
        if times and trainer.is_global_zero and not trainer.sanity_checking:
            write_line(analysis_line(trainer.current_epoch, times))


# The progress bar's names for the metrics it shows: short, so that validation accuracy fits on a
# 120-column terminal beside the training loss (the loggers keep the full names).
PROGRESS_NAMES = {
    "train/loss": "loss",
    "train/acc": "acc",
    "val/loss": "val_loss",
    "val/acc1": "val_acc",
}


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar with short metric names and without ``v_num`` (the logger's
    version, which says nothing here and pushed validation accuracy off a 120-column line)."""

    @override
    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return {PROGRESS_NAMES.get(k, k): v for k, v in items.items()}
