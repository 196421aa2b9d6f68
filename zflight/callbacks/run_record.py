"""``RunRecord``: the per-epoch numbers the gallery's header shows, in ``<run_dir>/viz/metrics.jsonl``.

At each validation end rank 0 appends one strict-JSON line: the epoch, the step its metrics were
logged at, every ``val/*`` metric and the mean training loss of the epoch (rank 0's batches),
then has the gallery rebuilt after the visual callbacks' output.
"""

from __future__ import annotations

import json
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from zflight.callbacks.disk import DISK
from zflight.callbacks.gallery_index import flush_galleries, write_gallery
from zflight.callbacks.sinks import WRITER, json_value, log_step, viz_dir


class RunRecord(pl.Callback):
    """Records validation metrics and the epoch's mean training loss for the gallery (rank 0)."""

    def __init__(self) -> None:
        self._loss_sum: torch.Tensor | None = None
        self._batches = 0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loss_sum, self._batches = None, 0

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # summed on the device: no synchronisation per batch
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._batches += 1
        if trainer.is_global_zero:
            WRITER.drain(raise_errors=False)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": log_step(trainer)}
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if self._loss_sum is not None and trainer.state.fn == "fit":
            metrics["train/loss"] = float(self._loss_sum) / self._batches
        notes = {}
        for key, value in sorted(metrics.items()):
            v = json_value(value)
            row[key] = v["value"]
            if "note" in v:
                notes[key] = v["note"]
        if notes:
            row["notes"] = notes
        root = viz_dir(trainer)

        def job() -> None:
            line = json.dumps(row, allow_nan=False) + "\n"
            DISK.append_text(root / "metrics.jsonl", line, "metrics.jsonl line")
            write_gallery(root)

        WRITER.submit("gallery", job)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        WRITER.flush(raise_errors=False)
        if trainer.is_global_zero:
            flush_galleries()  # the last, debounced update
