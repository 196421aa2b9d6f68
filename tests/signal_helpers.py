"""Train in a subprocess and say when a chosen moment is reached, so a test (or a measurement) can
send a signal there: ``python -m tests.signal_helpers MOMENT MARKER key=value ...``.

MOMENT is ``train`` (a training batch of the first epoch), ``validation`` (a validation batch),
``occlusion`` (inside the occlusion map's chunk loop), ``actmax`` (inside the optimisation steps),
``deconv`` (inside the deconvnet projections) or ``start`` (before the first batch). When it is
reached, MARKER is written and the process slows down there (every step sleeps 0.2 s), so the
signal arrives in the middle of that moment, not after it. ``hold`` writes MARKER at the start of
training and waits there until the file ``MARKER.release`` exists.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning.pytorch as pl


def _mark(marker: Path) -> None:
    if not marker.exists():
        marker.write_text(f"{time.time()}\n")
    time.sleep(0.2)


class MarkAt(pl.Callback):
    """Marks the ``train``, ``validation`` or ``start`` moment from Lightning's hooks."""

    def __init__(self, moment: str, marker: str) -> None:
        self.moment, self.marker = moment, Path(marker)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.moment == "start":
            _mark(self.marker)
        if self.moment == "hold":
            self.marker.write_text(f"{time.time()}\n")
            release = self.marker.with_name(self.marker.name + ".release")
            while not release.exists():
                time.sleep(0.05)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.moment == "train" and batch_idx >= 1:
            _mark(self.marker)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *a) -> None:
        if self.moment == "validation" and trainer.state.fn == "fit":
            _mark(self.marker)


def _patch_analysis(moment: str, marker: Path) -> None:
    """Wrap the chunk iterator of one analysis so each of its chunks marks and slows down."""
    import zflight.analysis.stopping as stopping

    modules = {
        "occlusion": "zflight.analysis.occlusion",
        "actmax": "zflight.analysis.actmax",
        "deconv": "zflight.analysis.topk",
    }
    if moment not in modules:
        return
    import importlib

    module = importlib.import_module(modules[moment])
    real = stopping.checked

    def slow_checked(items):
        for item in real(items):
            _mark(marker)
            yield item

    module.checked = slow_checked


def main(argv: list[str]) -> int:
    moment, marker, overrides = argv[0], Path(argv[1]), argv[2:]
    _patch_analysis(moment, marker)
    import zflight.run.build as build

    real = build.build_callbacks
    build.build_callbacks = lambda cfg: [*real(cfg), MarkAt(moment, str(marker))]
    from zflight.train import main as train_main

    return train_main(overrides)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
