"""Divergence is news: a non-finite training loss stops the run at once, on every rank, with the
epoch, the step and the checkpoint to go back to (exit code 1), before a NaN weight is saved or
drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from zflight.run.checkpoints import LastCheckpoint
from zflight.run.commands import RunFailure


class Diverged(RunFailure):
    """The training loss became NaN or infinite."""


class StopOnDivergence(pl.Callback):
    """Checks every training step's loss and stops at the first that is not finite.

    A step's check is read at the end of the next step (or before validation, or at the end of the
    epoch), so the host never waits for the step just queued on the GPU; under DDP the ranks agree
    (one boolean all-reduce) so that all of them stop together.

    Args:
        last: the run's ``LastCheckpoint`` (where the last good weights are).
        resumed_from: the checkpoint this session started from, if any.
    """

    def __init__(self, last: LastCheckpoint, resumed_from: str | None = None) -> None:
        self.last = last
        self.resumed_from = resumed_from
        self._pending: tuple[torch.Tensor, int, int, int] | None = None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.check(trainer)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            step = trainer.global_step - 1  # the optimizer step this loss led to
            self._pending = (loss.detach().float(), trainer.current_epoch, batch_idx, step)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self.check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: pl.Trainer) -> None:
        """Raise ``Diverged`` (on every rank) if the pending step's loss is not finite."""
        if self._pending is None:
            return
        loss, epoch, batch_idx, step = self._pending
        self._pending = None
        bad = not bool(torch.isfinite(loss).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            message = self.message(float(loss), epoch, batch_idx, step)
            raise Diverged(message, quiet=not trainer.is_global_zero)

    def message(self, loss: float, epoch: int, batch_idx: int, step: int) -> str:
        where = (
            f"training diverged: the loss is {loss} at epoch {epoch}, batch {batch_idx} "
            f"(global step {step}); training stopped."
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
