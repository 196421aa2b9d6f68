"""The incremental gallery: damaged JSON lines skipped and counted, the last row of an (epoch, key)
wins, updates debounced, only new data read, and only the changed data file rewritten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from zflight.callbacks.gallery import read_jsonl
from zflight.callbacks.gallery_index import CHUNK_EPOCHS, GalleryIndex


def chunk_data(viz: Path, chunk: int) -> dict:
    text = (viz / "gallery" / f"{chunk:04d}.js").read_text()
    return json.loads(text[text.index("push(") + 5 : text.rindex(");")])


def scalar_line(epoch: int, key: str, value: float) -> str:
    return json.dumps({"epoch": epoch, "step": epoch, "key": key, "value": value}) + "\n"


def test_damaged_lines_are_skipped_and_counted_and_the_last_row_wins(tmp_path):
    viz = tmp_path / "run" / "viz"
    viz.mkdir(parents=True)
    (viz / "scalars.jsonl").write_text(
        scalar_line(0, "cb/a", 1.0)
        + '{"epoch": 1, "step": 1, "key": "cb/a", "val'  # cut short by a kill...
        + "\n[1, 2, 3]\n"  # ...a foreign line, an object without its key, one without an epoch
        + '{"epoch": 2, "value": 5}\n{"key": "cb/a", "value": 5}\n'
        + scalar_line(1, "cb/a", 2.0)
        + scalar_line(1, "cb/a", 3.0)  # the same (epoch, key) again after a resume: this one wins
    )
    (viz / "metrics.jsonl").write_text('{"epoch": 0, "val/acc1": 0.5}\nnot json\n')
    index = GalleryIndex(viz)
    assert index.update(force=True) == viz / "index.html"
    assert index.damaged == {"metrics.jsonl": 1, "scalars.jsonl": 4}
    data = chunk_data(viz, 0)
    assert data["scalars"]["cb/a"] == [[0, 1.0], [1, 3.0]]
    assert [m["epoch"] for m in data["metrics"]] == [0]
    page = (viz / "index.html").read_text()
    assert '"damaged":{"metrics.jsonl":1,"scalars.jsonl":4}' in page
    assert len(read_jsonl(viz / "scalars.jsonl", needs_key=True)) == 3


def test_updates_are_debounced_and_read_only_what_is_new(tmp_path):
    viz = tmp_path / "run" / "viz"
    viz.mkdir(parents=True)
    (viz / "scalars.jsonl").write_text(scalar_line(0, "cb/a", 1.0))
    index = GalleryIndex(viz, debounce_s=3600)
    assert index.update() is not None  # the first one is written
    with open(viz / "scalars.jsonl", "a") as f:
        f.write(
            scalar_line(1, "cb/a", 2.0) + '{"epoch": 2, "key": "cb/a"'
        )  # the last one unfinished
    assert index.update() is None, "within the debounce interval: nothing written"
    assert chunk_data(viz, 0)["scalars"]["cb/a"] == [[0, 1.0]]
    index.update(force=True)
    assert chunk_data(viz, 0)["scalars"]["cb/a"] == [[0, 1.0], [1, 2.0]]
    assert index.damaged["scalars.jsonl"] == 0, "a line still being written is not damaged"
    with open(viz / "scalars.jsonl", "a") as f:
        f.write(', "value": 4.0}\n')
    (viz / "scalars.jsonl").touch()
    index.update(force=True)
    assert chunk_data(viz, 0)["scalars"]["cb/a"][-1] == [2, 4.0]


def test_only_the_changed_data_file_is_rewritten(tmp_path):
    viz = tmp_path / "run" / "viz"
    for epoch in range(CHUNK_EPOCHS + 2):
        path = viz / "cb" / "k" / f"epoch_{epoch:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(path)
    index = GalleryIndex(viz, debounce_s=0)
    index.update(force=True)
    first, second = viz / "gallery" / "0000.js", viz / "gallery" / "0001.js"
    assert len(chunk_data(viz, 0)["figures"]["cb/k"]) == CHUNK_EPOCHS
    assert [f[0] for f in chunk_data(viz, 1)["figures"]["cb/k"]] == [10, 11]
    stamps = (first.stat().st_mtime_ns, (viz / "index.html").stat().st_mtime_ns)
    new = viz / "cb" / "k" / f"epoch_{CHUNK_EPOCHS + 2:04d}.png"
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(new)
    index.note_figure(new)
    index.update(force=True)
    assert [f[0] for f in chunk_data(viz, 1)["figures"]["cb/k"]] == [10, 11, 12]
    assert (first.stat().st_mtime_ns, (viz / "index.html").stat().st_mtime_ns) == stamps
    assert second.exists()
