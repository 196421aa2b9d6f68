"""An ImageFolder's index, built once and kept: keyed by the folder's state, shared across ranks.

Indexing reads every file's header (``files.index_images``): minutes for ImageNet's 1.28M files,
on every rank, at every start. Here the first process of a machine (``LOCAL_RANK`` 0, or a process
outside any launcher) indexes a split and writes the result to ``cache_dir``; the other ranks wait
for that file and read it, and a restart reads it too. The key is the split's path and the name,
inode and modification time of each class folder: adding, removing or renaming a file changes its
folder's time, so a changed folder is indexed again. (A file rewritten in place under the same
name keeps the key; a damaged body is still caught when it is decoded, ``files.load_or_skip``.)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from pathlib import Path

from zflight.data.files import ImageIndex, index_images

CACHE_VERSION = 1
WAIT_SECONDS = 600.0  # how long a rank waits for the first rank's index before indexing itself


def folder_key(split_dir: Path, classes: list[str]) -> str:
    """A digest of the split folder's state: its path, and each class folder's identity and time."""
    parts = [str(split_dir.resolve()), str(CACHE_VERSION)]
    for name in classes:
        st = os.stat(split_dir / name)
        parts.append(f"{name}\0{st.st_ino}\0{st.st_mtime_ns}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:20]


def is_first_local_rank() -> bool:
    """The process that indexes on this machine: local rank 0, or one started without a launcher."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0


def cached_index(
    split_dir: Path,
    classes: list[str],
    cache_dir: Path | None,
    first: bool | None = None,
    wait: float = WAIT_SECONDS,
) -> ImageIndex:
    """The index of ``split_dir``: read from ``cache_dir`` when a matching one is there, else built
    (by the first local rank, which writes it; the others wait up to ``wait`` seconds for it)."""
    if cache_dir is None:
        return index_images(split_dir, classes)
    path = cache_dir / f"imagefolder-{folder_key(split_dir, classes)}.pkl"
    first = is_first_local_rank() if first is None else first
    if not first:
        deadline = time.monotonic() + wait
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    found = _read(path)
    if found is not None:
        return found
    index = index_images(split_dir, classes)
    if first:
        _write(path, index)
    return index


def _read(path: Path) -> ImageIndex | None:
    try:
        with open(path, "rb") as f:
            samples, bad = pickle.load(f)
        return ImageIndex(samples, bad)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError):
        return None


def _write(path: Path, index: ImageIndex) -> None:
    """Written beside its name and renamed, so a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            pickle.dump((index.samples, index.bad), f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache folder only costs the next start its indexing
