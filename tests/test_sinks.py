"""The background writer: order, main-thread logger calls, errors, back-pressure, copies."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from zflight.callbacks.results import VizResult
from zflight.callbacks.sinks import BackgroundWriter, write_outputs


def test_jobs_run_in_order_and_finish_on_the_main_thread():
    writer = BackgroundWriter()
    ran, finished = [], []

    def job(i):
        def run():
            time.sleep(0.01 * (3 - i))  # the first job is the slowest: order must still hold
            ran.append((i, threading.current_thread().name))
            return lambda: finished.append((i, threading.current_thread()))

        return run

    for i in range(3):
        writer.submit(f"job{i}", job(i))
    writer.flush()
    assert [i for i, _ in ran] == [0, 1, 2]
    assert {name for _, name in ran} == {"zflight-writer"}
    assert finished == [(i, threading.main_thread()) for i in range(3)]
    assert not writer.pending()


def test_failures_warn_or_raise_by_strictness():
    writer = BackgroundWriter()

    def boom():
        raise OSError("disk full")

    writer.submit("lenient", boom)
    with pytest.warns(UserWarning, match=r"(?s)'lenient'.*disk full"):
        writer.flush()
    writer.submit("strict", boom, strict=True)
    with pytest.raises(RuntimeError, match=r"(?s)'strict'.*disk full"):
        writer.flush()
    writer.submit("after", lambda: None)  # the thread survives failures
    writer.flush()
    assert not writer.pending()


def test_back_pressure_bounds_pending_jobs():
    writer = BackgroundWriter(max_pending=1)
    gate = threading.Event()
    writer.submit("held", lambda: gate.wait() and None)  # taken by the thread, blocks it
    time.sleep(0.05)
    writer.submit("queued", lambda: None)  # fills the single slot
    blocked = threading.Thread(target=writer.submit, args=("third", lambda: None))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive(), "a third job must wait while one runs and one is queued"
    gate.set()
    blocked.join(5)
    writer.flush()
    assert not blocked.is_alive() and not writer.pending()


@pytest.mark.parametrize("background", [True, False])
def test_written_figure_is_the_one_produced_not_a_later_edit(tmp_path, background):
    trainer = SimpleNamespace(
        default_root_dir=str(tmp_path), current_epoch=3, global_step=30, loggers=[]
    )
    image = np.zeros((8, 8, 3), np.uint8)
    image[2, 5] = (255, 0, 0)
    write_outputs(trainer, "cb", VizResult({"k": image}, {"s": 2.5}), background=background)
    image[:] = 255  # the caller reuses its array at once
    from zflight.callbacks.sinks import WRITER

    WRITER.flush()
    png = np.asarray(Image.open(Path(tmp_path) / "viz/cb/k/epoch_0003.png"))
    assert png.sum() == 255 and tuple(png[2, 5]) == (255, 0, 0)
    assert '"value": 2.5' in (Path(tmp_path) / "viz/scalars.jsonl").read_text()
    assert "gallery/0000.js" in (Path(tmp_path) / "viz/index.html").read_text()
    assert "cb/k/epoch_0003.png" in (Path(tmp_path) / "viz/gallery/0000.js").read_text()
