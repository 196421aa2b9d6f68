"""The default process group is destroyed before the interpreter shuts down.

A gloo process group left alive at exit keeps C++ worker threads holding finished work (with
tensors); tearing them down during interpreter finalization aborts the process on some exits
("terminate called without an active exception", SIGABRT, after ``fit`` has returned). Lightning
registers this clean-up for NCCL only; ``destroy_process_group_at_exit`` does it for every backend.
"""

from __future__ import annotations

import atexit
import signal

import torch.distributed as dist

_registered = False


def destroy_process_group_at_exit() -> None:
    """Register (once per process) the destruction of the default process group at exit."""
    global _registered
    if not _registered:
        atexit.register(_destroy)
        _registered = True


def _destroy() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C here would abort anyway
    try:
        dist.destroy_process_group()
    finally:
        signal.signal(signal.SIGINT, previous)
