"""The one guarded path for every file a run writes: checkpoints, PNGs, JSON lines, the gallery.

A file is written whole or not at all: written to a temporary file beside it and renamed over it
(an append is cut back to its old length when it fails), so a full disk leaves the previous version
intact. A write that fails for lack of space (ENOSPC, EDQUOT) is recorded, warned about once per
run (not once per file), and named in the run's summary (``DISK.summary()``); other errors are
raised as before. Whether the run may go on is the caller's choice: pictures and logs may be
skipped, a checkpoint that cannot be written stops the run (``zflight.run.checkpoints``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


class DiskGuard:
    """Writes files atomically and keeps account of what a full disk kept from being written."""

    def __init__(self) -> None:
        self.unwritten: dict[str, list[str]] = {}
        self._warned = False
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.unwritten, self._warned = {}, False

    def save(self, path: str | Path, kind: str, write: Callable[[IO[bytes]], None]) -> bool:
        """Write ``path`` with ``write(file)`` into a temporary file, fsync it and rename it over
        ``path``. False (the old file kept) when the disk is full; other errors are raised."""
        path = Path(path)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.fchmod(fd, 0o666 & ~_umask())  # as an ordinary open() would (mkstemp gives 0600)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            if not no_space(exc):
                raise
            self.failed(path, kind, exc)
            return False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        _sync_directory(path.parent)
        return True

    def write_text(self, path: str | Path, text: str, kind: str) -> bool:
        data = text.encode("utf-8")
        return self.save(path, kind, lambda f: f.write(data))

    def append_text(self, path: str | Path, text: str, kind: str) -> bool:
        """Append ``text`` (whole lines) to ``path``; on a full disk the file is cut back to its
        previous length, so no half line is left for the next append to run into."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                start = f.tell()
                try:
                    f.write(text.encode("utf-8"))
                    f.flush()
                except OSError:
                    with contextlib.suppress(OSError):
                        f.truncate(start)
                    raise
        except OSError as exc:
            if not no_space(exc):
                raise
            self.failed(path, kind, exc)
            return False
        return True

    def failed(self, path: Path, kind: str, exc: OSError) -> None:
        """Record a write the disk had no room for; warn the first time."""
        with self._lock:
            self.unwritten.setdefault(kind, []).append(str(path))
            first, self._warned = not self._warned, True
        if first:
            warnings.warn(
                f"the disk is full ({exc.strerror or exc}): {path} was not written; the previous "
                f"files are kept, and the summary lists what could not be written",
                stacklevel=2,
            )

    def summary(self) -> str | None:
        """One line naming what was not written, or None when everything was."""
        with self._lock:
            if not self.unwritten:
                return None
            parts = [
                f"{len(paths)} {kind}{'' if len(paths) == 1 else 's'} (first {paths[0]})"
                for kind, paths in self.unwritten.items()
            ]
        return "not written, the disk was full: " + "; ".join(parts)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync_directory(directory: Path) -> None:
    """The rename itself survives a power cut."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


DISK = DiskGuard()
