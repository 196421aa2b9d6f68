"""Preemption that loses nothing: a signal (SIGTERM, or the requeue signal a cluster sends before
its time limit) stops the run at the next batch or analysis chunk, ``last.ckpt`` is saved, one line
names it, and the process exits with ``128 + signal`` (143 for SIGTERM, 138 for SIGUSR1), which a
requeue script reads as "stopped on request, resume from last.ckpt".

Lightning's own mechanism does the stopping: the handler sets the trainer's ``received_sigterm``
flag, and Lightning's loops raise ``SIGTERMException`` at the next batch (under DDP rank 0's flag
is broadcast with every training batch, so all ranks stop at the same one). The handler also sets
the analyses' stop flag (``zflight.analysis.stopping``), which they check between chunks, so a
signal in the middle of an occlusion map is honoured within one chunk. It replaces Lightning's
SIGTERM handler, which broadcasts inside the handler (a collective that can meet an analysis's
all-gather on another rank), and SLURM's auto-requeue handler, which saves a checkpoint inside the
handler; the requeue is left to ``scripts/slurm.sbatch``, keyed on the exit code.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from zflight.analysis.stopping import clear_stop, request_stop
from zflight.run.commands import RunFailure


class Preempted(RunFailure):
    """The run stopped on a signal after saving ``last.ckpt``; exit code ``128 + signal``."""

    def __init__(self, message: str, signum: int, quiet: bool = False) -> None:
        super().__init__(message, quiet)
        self.exit_code = 128 + int(signum)


def signal_number(name: str | int) -> signal.Signals:
    """``"SIGUSR1"``, ``"USR1"`` or ``10`` as a signal; ValueError naming the valid form."""
    if isinstance(name, int) or str(name).isdigit():
        return signal.Signals(int(name))
    text = str(name).upper()
    text = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return signal.Signals[text]
    except KeyError:
        raise ValueError(
            f"unknown signal {name!r}; use a name such as SIGTERM or SIGUSR1"
        ) from None


class Preemption(pl.Callback):
    """Turns the given signals into a saved, clean stop (see the module docstring).

    Args:
        signals: the signals honoured (names or numbers); SIGTERM and SIGUSR1 by default.

    Attributes:
        received: the first signal received (None while there was none).
        epoch: the epoch it arrived in.
    """

    def __init__(self, signals: tuple[str | int, ...] = ("SIGTERM", "SIGUSR1")) -> None:
        self.signals = [signal_number(s) for s in signals]
        self.received: int | None = None
        self.epoch = 0
        self._trainer: pl.Trainer | None = None
        self._previous: dict[int, Any] = {}

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(int(signum), previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        if first:
            self.received = signum
        request_stop()
        trainer = self._trainer
        if trainer is None:
            return
        if first:
            self.epoch = trainer.current_epoch
        trainer._signal_connector.received_sigterm = (
            True  # Lightning's loops stop at the next batch
        )
        launcher = trainer.strategy.launcher
        if first and launcher is not None and hasattr(launcher, "kill"):
            launcher.kill(signum)  # the ranks this process started get the signal too

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self.received = None
        clear_stop()
        self._install()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install()  # Lightning registered its own SIGTERM handler just before the loop

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.restore()

    def restore(self) -> None:
        """Put back the handlers that were there before (also after a stop, which skips teardown)."""
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "a signal"
