"""A process-wide stop flag that long analyses check between chunks.

A signal handler (the run's preemption handling) calls ``request_stop``; an analysis calls
``check_stop()`` between chunks of its work (occlusion positions, actmax steps, deconvnet batches)
and so ends within one chunk of the request instead of running to its end. Standard library only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_STOP = threading.Event()


class StopRequested(Exception):
    """Raised by ``check_stop`` once a stop was requested: the analysis ends where it is."""


def request_stop() -> None:
    """Ask every analysis of this process to end at its next check (safe in a signal handler)."""
    _STOP.set()


def clear_stop() -> None:
    _STOP.clear()


def stop_requested() -> bool:
    return _STOP.is_set()


def check_stop() -> None:
    """Raise ``StopRequested`` when a stop was requested; otherwise return at once."""
    if _STOP.is_set():
        raise StopRequested("stop requested")


def checked(items: Iterable[T]) -> Iterator[T]:
    """``items``, with ``check_stop()`` before each: ``for i in checked(range(0, n, chunk))``."""
    for item in items:
        check_stop()
        yield item
