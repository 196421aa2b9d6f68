"""The image files of an ImageNet-layout folder, checked cheaply, and what to do with bad ones.

Indexing reads each file's first 16 bytes (about 0.1 ms a file with the listing): empty files, files that cannot be
opened and files that are not an image of a known format are found before training and listed in
one warning, or, past ``bad_file_limit``, stop the run with a ``DataError`` naming them. A file
whose header is fine but whose body is damaged is found when it is first decoded: the data sets
then skip it (see ``load_or_skip``) and say so once, naming it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    *((f"P{i}".encode(), "PPM") for i in range(1, 7)),
)
MAX_BAD_FRACTION = 0.01  # past max(10 files, 1% of the files), capped at 100 files, the run stops
MAX_BAD_FILES = 100
T = TypeVar("T")


class DataError(ValueError):
    """The data cannot be used as given (unreadable images, class folders that differ)."""


@dataclass
class ImageIndex:
    """``samples``: (path, class index) of the readable files; ``bad``: (path, why) of the others."""

    samples: list[tuple[str, int]] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)


def image_files(folder: Path) -> list[Path]:
    """The files of ``folder`` with an image suffix, sorted."""
    return sorted(
        Path(e.path)
        for e in os.scandir(folder)
        if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
    )


def why_unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be an image (empty, cannot be opened, unknown header), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return f"cannot be opened: {exc.strerror or exc}"
    if not head:
        return "empty (0 bytes)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return None
    if any(head.startswith(magic) for magic, _ in _MAGIC):
        return None
    return f"not a JPEG, PNG, BMP, WEBP, PPM or TIFF image (starts with {head[:8].hex(' ')})"


def index_images(split_dir: Path, classes: list[str]) -> ImageIndex:
    """Every image of ``split_dir/<class>/``, labelled by its class's position in ``classes``."""
    index = ImageIndex()
    for label, name in enumerate(classes):
        for path in image_files(split_dir / name):
            why = why_unreadable(path)
            if why is None:
                index.samples.append((str(path), label))
            else:
                index.bad.append((str(path), why))
    return index


def bad_file_limit(total: int) -> int:
    """How many unreadable files of ``total`` are skipped before the run stops."""
    return min(MAX_BAD_FILES, max(10, math.ceil(MAX_BAD_FRACTION * total)))


def report_bad_files(index: ImageIndex, where: Path) -> None:
    """One warning listing the unreadable files, or a ``DataError`` when there are too many."""
    if not index.bad:
        return
    total = len(index.samples) + len(index.bad)
    shown = "; ".join(f"{p} ({why})" for p, why in index.bad[:10])
    more = f"; and {len(index.bad) - 10} more" if len(index.bad) > 10 else ""
    what = f"{len(index.bad)} of {total} image files under {where} cannot be read: {shown}{more}"
    limit = bad_file_limit(total)
    if len(index.bad) > limit:
        raise DataError(f"{what} (more than {limit}; fix or remove them)")
    rank_zero_warn(f"{what}; skipping them")


_reported: set[str] = set()


def load_or_skip(
    samples: list[tuple[str, int]], index: int, load: Callable[[str], T]
) -> tuple[T, int]:
    """``load`` the sample at ``index``; a file that fails to decode is skipped for the next one,
    named once per process on stderr. Raises ``DataError`` after ten failures in a row."""
    for step in range(10):
        path, label = samples[(index + step) % len(samples)]
        try:
            return load(path), label
        except Exception as exc:
            if path not in _reported:
                _reported.add(path)
                reason = " ".join(str(exc).split())[:200]
                print(f"skipping unreadable image {path}: {reason}", file=sys.stderr, flush=True)
    raise DataError(f"ten images in a row from {samples[index][0]} on cannot be decoded")


class PilImages(Dataset):
    """``(transform(RGB PIL image), label)`` for each (path, label); undecodable files skipped."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Any], Any]) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = load_or_skip(self.samples, index, _pil_rgb)
        return self.transform(image), label


def _pil_rgb(path: str) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")
