"""``WRITER``: one background thread that writes visual output in order while training goes on.

W&B's ``log`` is not thread-safe, so a job may hand back a ``finish`` call that ``drain()`` makes on
the main thread.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable

Finish = Callable[[], None]


class BackgroundWriter:
    """One daemon thread that runs output jobs in submission order.

    A job runs on the thread and may return a ``finish`` callable that must run on the main thread
    (a W&B ``log``); ``drain()`` runs the finished ones, ``flush()`` waits for every job first. At
    most ``max_pending`` jobs wait at once: a producer faster than the disk blocks rather than
    piling figures up in memory. A failed job is reported at the next drain: a warning, or an
    exception when it was submitted with ``strict=True``.
    """

    def __init__(self, max_pending: int = 8) -> None:
        self._jobs: queue.Queue = queue.Queue(maxsize=max_pending)
        self._done: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def submit(self, label: str, job: Callable[[], Finish | None], strict: bool = False) -> None:
        with self._start:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="zflight-writer", daemon=True
                )
                self._thread.start()
        self._jobs.put((label, job, strict))

    def pending(self) -> bool:
        return self._jobs.unfinished_tasks > 0 or not self._done.empty()

    def drain(self, raise_errors: bool = True) -> None:
        """Run the main-thread part of every finished job; report failures."""
        while True:
            try:
                label, strict, finish, error = self._done.get_nowait()
            except queue.Empty:
                return
            if error is None and finish is not None:
                try:
                    finish()
                except Exception as exc:
                    error = "".join(traceback.format_exception(exc))
            if error is not None:
                if strict and raise_errors:
                    raise RuntimeError(f"could not write the output of {label!r}:\n{error}")
                from lightning.pytorch.utilities import rank_zero_warn

                rank_zero_warn(
                    f"could not write the output of {label!r}; training continues.\n{error}"
                )

    def flush(self, raise_errors: bool = True) -> None:
        """Wait until every submitted job has run, then drain."""
        if self._thread is not None and self._thread.is_alive():
            self._jobs.join()
        self.drain(raise_errors)

    def _loop(self) -> None:
        while True:
            label, job, strict = self._jobs.get()
            try:
                self._done.put((label, strict, job(), None))
            except Exception as exc:
                self._done.put((label, strict, None, "".join(traceback.format_exception(exc))))
            finally:
                self._jobs.task_done()


WRITER = BackgroundWriter()
