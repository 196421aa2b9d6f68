"""One run, one directory: an exclusive lock on the run directory for as long as a process trains,
resumes or visualises into it. Standard library only.

The lock is ``fcntl.flock`` on ``<dir>/.zflight.lock``, which holds the owner's pid and host. The
kernel drops a flock when its process dies, however it dies, so a lock file left behind by a killed
run is taken over by the next one (and it says so); a live owner is named in the refusal. Only the
process that launches a run takes the lock: the other DDP ranks it starts use the same directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from zflight.config import ConfigError

LOCK_NAME = ".zflight.lock"


def launching_process() -> bool:
    """True in the process that starts a run: not a rank > 0 of torchrun, srun or Lightning's DDP."""
    ranks = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
    return all(os.environ.get(k, "0") in ("", "0") for k in ranks)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on ``directory`` (created if needed); ``acquire`` or ConfigError (exit 2).

    Attributes:
        took_over: a line saying whose stale lock was taken over, or None.
    """

    def __init__(self, directory: str | Path, key: str = "run_dir") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.key = key
        self.took_over: str | None = None
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            return self._acquire()
        except OSError as exc:
            raise ConfigError(
                f"{self.key}: cannot lock {self.directory}: {exc.strerror or exc}"
            ) from None

    def _acquire(self) -> RunLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # the file may be replaced under us by an owner that is releasing it
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise ConfigError(self._refusal()) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise ConfigError(f"{self.key}={self.directory}: could not take its lock {self.path}")
        self.took_over = self._stale_note(os.pread(fd, 512, 0).decode(errors="replace"))
        host, pid = socket.gethostname(), os.getpid()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid} {host} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def _refusal(self) -> str:
        owner = self._owner()
        who = f"process {owner[0]} on {owner[1]}" if owner else "another process"
        return (
            f"{self.key}={self.directory} is in use by {who} (lock {self.path}); wait for it to "
            f"end or choose another {self.key}"
        )

    def _owner(self) -> tuple[str, str] | None:
        with contextlib.suppress(OSError):
            parts = self.path.read_text().split()
            if len(parts) >= 2:
                return parts[0], parts[1]
        return None

    def _stale_note(self, text: str) -> str | None:
        parts = text.split()
        if len(parts) < 2 or not parts[0].isdigit():
            return None
        pid, host = int(parts[0]), parts[1]
        if pid == os.getpid() and host == socket.gethostname():
            return None
        here = host == socket.gethostname()
        gone = "no longer holding it" if here and _alive(pid) else "no longer running"
        return (
            f"took over the stale lock of {self.directory} left by process {pid} on {host} ({gone})"
        )

    def release(self) -> None:
        """Drop the lock and remove its file (the kernel drops it anyway when the process ends)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_new_directory(path: Path) -> Path:
    """Create ``path``, or ``path-2``, ``path-3``... when it exists: two runs started in the same
    second never share a dated directory (``mkdir`` is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{path.name}-{n}")
