"""The gallery kept up to date at a cost that does not grow with the run's length.

``index.html`` holds the page and the run's header; the figures, scalars and metrics live in data
files of ten epochs each (``viz/gallery/NNNN.js``, loaded by the page from ``file://`` like its
PNGs). An update rewrites only the data file of the epochs that changed, and ``index.html`` only
when a new data file appears or the run's config changes. Nothing already seen is read again: new
PNGs are announced by the writer that wrote them, and the JSON-lines files are read from where the
last update stopped (damaged lines skipped and counted). Updates are debounced: at most one every
``DEBOUNCE_S`` seconds, and a last one when the run ends (``flush_galleries``). ``index.html`` is
rewritten only when a data file, a figure key or the run's config is new.

Duplicates of one (epoch, key) are resolved at read time: the row written last wins.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

from zflight.callbacks.disk import DISK
from zflight.callbacks.gallery import (
    _EPOCH_PNG,
    _png_header,
    config_summary,
    figure_frames,
    parse_rows,
    render,
    section_order,
)

CHUNK_EPOCHS = 10
DEBOUNCE_S = 5.0
_JSONL = {"metrics.jsonl": False, "scalars.jsonl": True}  # file -> rows need a "key"


class GalleryIndex:
    """The gallery of one ``viz/`` folder, updated incrementally (thread-safe)."""

    def __init__(self, root: Path, debounce_s: float = DEBOUNCE_S) -> None:
        self.root = root
        self.debounce_s = debounce_s
        self.figures: dict[int, dict[str, dict[int, list[Any]]]] = {}
        self.scalars: dict[int, dict[str, dict[int, Any]]] = {}
        self.metrics: dict[int, dict[int, dict[str, Any]]] = {}
        self.damaged = dict.fromkeys(_JSONL, 0)
        self._offsets = dict.fromkeys(_JSONL, 0)
        self._dirty: set[int] = set()
        self._written_chunks: tuple[int, ...] | None = None
        self._config: list[list[str]] | None = None
        self._written_keys: list[str] | None = None
        self._last: float | None = None  # the first update is always written
        self._scanned = False
        self._lock = threading.Lock()

    def note_figure(self, png: Path) -> None:
        """A PNG was written under ``root`` (its header is read now, once)."""
        with self._lock:
            if self._scanned:
                self._add_png(png)

    def update(self, force: bool = False) -> Path | None:
        """Bring the page up to date, unless one was written less than ``debounce_s`` ago."""
        with self._lock:
            if not self._scanned:
                self._scan()
            self._read_new_rows()
            now = time.monotonic()
            if not force and self._last is not None and now - self._last < self.debounce_s:
                return None
            self._last = now
            return self._write()

    # ---- reading -------------------------------------------------------------------------------
    def _scan(self) -> None:
        """Once per process: what is already on disk (a resumed run, a second gallery)."""
        for key, frames in figure_frames(self.root).items():
            for frame in frames:
                self._put(self.figures, frame[0], key, frame)
        self._scanned = True

    def _add_png(self, png: Path) -> None:
        m = _EPOCH_PNG.search(png.name)
        if not m:
            return
        try:
            w, h, text = _png_header(png)
        except OSError:
            return
        epoch = int(m.group(1))
        key = png.parent.relative_to(self.root).as_posix()
        self._put(
            self.figures, epoch, key, [epoch, png.relative_to(self.root).as_posix(), w, h, text]
        )

    def _read_new_rows(self) -> None:
        for name, needs_key in _JSONL.items():
            path = self.root / name
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets[name])
                    data = f.read()
            except OSError:
                continue
            whole = data[: data.rfind(b"\n") + 1]  # a line still being written waits
            self._offsets[name] += len(whole)
            rows, damaged = parse_rows(whole.decode("utf-8", "replace").splitlines(), needs_key)
            self.damaged[name] += damaged
            for row in rows:
                epoch = row["epoch"]
                if needs_key:
                    value = row.get("value")
                    if isinstance(value, float) and not math.isfinite(value):
                        value = None
                    self._put(self.scalars, epoch, row["key"], value)
                else:
                    self.metrics.setdefault(epoch // CHUNK_EPOCHS, {})[epoch] = row
                    self._dirty.add(epoch // CHUNK_EPOCHS)

    def _put(self, store: dict, epoch: int, key: str, value: Any) -> None:
        chunk = epoch // CHUNK_EPOCHS
        store.setdefault(chunk, {}).setdefault(key, {})[epoch] = value  # the last row wins
        self._dirty.add(chunk)

    # ---- writing -------------------------------------------------------------------------------
    def _write(self) -> Path:
        for chunk in sorted(self._dirty):
            DISK.write_text(
                self.root / "gallery" / f"{chunk:04d}.js", self._chunk(chunk), "gallery data"
            )
        self._dirty.clear()
        chunks = tuple(sorted({*self.figures, *self.scalars, *self.metrics}))
        config = config_summary(self.root.parent / "config.yaml")
        keys = self._keys()
        every = sorted({*keys, *(k for by in self.scalars.values() for k in by)})
        out = self.root / "index.html"
        changed = (chunks, config, every) != (
            self._written_chunks,
            self._config,
            self._written_keys,
        )
        if changed or not out.exists():
            data = {
                "run": self.root.parent.name,
                "config": config,
                "metrics": [],
                "figures": {},
                "scalars": {},
                "sections": section_order(every),
                "damaged": {k: v for k, v in self.damaged.items() if v},
            }
            page = render(data, [f"gallery/{c:04d}.js" for c in chunks], keys)
            if DISK.write_text(out, page, "gallery page"):
                self._written_chunks, self._config, self._written_keys = chunks, config, every
        return out

    def _chunk(self, chunk: int) -> str:
        part = {
            "figures": {
                k: [f for _, f in sorted(by.items())]
                for k, by in sorted(self.figures.get(chunk, {}).items())
            },
            "scalars": {
                k: [[e, v] for e, v in sorted(by.items())]
                for k, by in sorted(self.scalars.get(chunk, {}).items())
            },
            "metrics": [r for _, r in sorted(self.metrics.get(chunk, {}).items())],
        }
        payload = json.dumps(part, allow_nan=False, separators=(",", ":"))
        return f"(window.ZF_CHUNKS = window.ZF_CHUNKS || []).push({payload});\n"

    def _keys(self) -> list[str]:
        return sorted({k for by in self.figures.values() for k in by})


_INDEXES: dict[Path, GalleryIndex] = {}
_INDEXES_LOCK = threading.Lock()


def gallery_index(root: Path) -> GalleryIndex:
    with _INDEXES_LOCK:
        key = root.resolve()
        if key not in _INDEXES:
            _INDEXES[key] = GalleryIndex(root)
        return _INDEXES[key]


def write_gallery(root: Path, force: bool = False) -> Path:
    """Bring ``root/index.html`` up to date (incrementally, at most once every ``DEBOUNCE_S``
    seconds unless ``force``); every file replaced at once, never half written."""
    gallery_index(root).update(force=force)
    return root / "index.html"


def flush_galleries() -> None:
    """Write every gallery of this process now (the run ends: the last update is not skipped)."""
    with _INDEXES_LOCK:
        indexes = list(_INDEXES.values())
    for index in indexes:
        index.update(force=True)
