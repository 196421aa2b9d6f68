"""Divergence is news: a non-finite training loss stops the run at once, on every rank, with the
epoch, the step and the checkpoint to go back to (exit code 1), before a NaN weight is saved or
drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from zflight.checkpoints import LastCheckpoint
from zflight.commands import RunFailure


class Diverged(RunFailure):
    """The training loss became NaN or infinite."""


class StopOnDivergence(pl.Callback):
    """Checks each training step's loss; the ranks agree (one boolean all-reduce) before stopping.

    Args:
        last: the run's ``LastCheckpoint`` (where the last good weights are).
        resumed_from: the checkpoint this session started from, if any.
    """

    def __init__(self, last: LastCheckpoint, resumed_from: str | None = None) -> None:
        self.last = last
        self.resumed_from = resumed_from

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise Diverged(
                self.message(trainer, float(loss), batch_idx), not trainer.is_global_zero
            )

    def message(self, trainer: pl.Trainer, loss: float, batch_idx: int) -> str:
        where = (
            f"training diverged: the loss is {loss} at epoch {trainer.current_epoch}, "
            f"batch {batch_idx} (global step {trainer.global_step - 1}); training stopped."
        )
        if self.last.saved_epoch is not None:
            back, when = self.last.path, f" (end of epoch {self.last.saved_epoch})"
        elif self.resumed_from:
            back, when = Path(self.resumed_from), " (where this session started)"
        else:
            return (
                f"{where} No checkpoint was written before that: start again with a lower optim.lr."
            )
        return (
            f"{where} The last finite weights are in {_shown(back)}{when}: resume={_shown(back)} "
            f"goes back there; a new run with a lower optim.lr avoids it."
        )


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
