"""Loggers that a resumed run continues instead of starting over.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts (it warns and then drops
every earlier epoch); ``AppendingCSVLogger`` keeps it and appends under the same header (a new
column rewrites the file once with the wider header, rows kept). TensorBoard needs nothing: a
resumed run adds an event file beside the old ones and TensorBoard reads them together.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from typing_extensions import override


class AppendingWriter(ExperimentWriter):
    """Lightning's CSV ``ExperimentWriter`` that keeps an existing ``metrics.csv`` and its columns."""

    @override
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(k for k in header if k)


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` whose writer appends to the run's ``metrics.csv`` after a resume."""

    @property
    @override
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
