"""Callbacks and a launcher that put a training subprocess where a test wants it: slowed down with
a progress file (to kill it at a known moment), poisoned weights (divergence after a good epoch),
or a checkpoint write stalled half-way (to kill it during the write)."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch


class SlowSteps(pl.Callback):
    """After each training batch: append ``epoch batch`` to ``progress``, then sleep ``delay`` s."""

    def __init__(self, progress: str, delay: float = 0.2) -> None:
        self.progress = Path(progress)
        self.delay = delay

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.progress, "a") as f:
            f.write(f"{trainer.current_epoch} {batch_idx}\n")
        time.sleep(self.delay)


class PoisonAt(pl.Callback):
    """Sets one weight to infinity at the start of epoch ``epoch``: the next loss is not finite."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.parameters())[0, 0, 0, 0] = float("inf")  # conv1, any layout


class LastSeen(pl.Callback):
    """Records ``(epoch, (epoch, global_step) of last.ckpt or None)`` at each epoch's start."""

    seen: list = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        saved = torch.load(path, weights_only=False) if path.exists() else None
        got = (saved["epoch"], saved["global_step"]) if saved else None
        LastSeen.seen.append((trainer.current_epoch, got))


STALL_USAGE = "python -m tests.train_helpers STALL_AT key=value ..."


def stalled_training(stall_at: int, overrides: list[str]) -> int:
    """Train, but the ``stall_at``-th write of ``last.ckpt`` writes half its bytes, prints
    ``stalled`` beside the run directory and sleeps (a test kills the process there)."""
    import zflight.run.checkpoints as ck
    from zflight.train import main

    real_atomic, real_save, count = ck.atomic_save, torch.save, [0]

    marker: list[Path] = []

    def half_then_stall(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        marker[0].touch()
        time.sleep(600)

    def atomic(obj, path):
        if Path(path).name == "last.ckpt":
            count[0] += 1
            if count[0] == stall_at:
                marker.append(Path(path).parent.parent.parent / "stalled")
                ck.torch.save = half_then_stall
        real_atomic(obj, path)

    ck.atomic_save = atomic
    return main(overrides)


if __name__ == "__main__":
    sys.exit(stalled_training(int(sys.argv[1]), sys.argv[2:]))
