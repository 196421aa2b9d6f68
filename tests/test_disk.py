"""A full disk is survivable: every write goes through one guarded path that keeps the previous
file whole, warns once and names what was not written; a checkpoint that cannot be written stops
the run with one line; a resume checks the free space first. The disk is filled by injecting
ENOSPC into the guarded path's file creation (a small tmpfs behaves the same, without root)."""

from __future__ import annotations

import errno
import json
import tempfile
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import zflight.callbacks.disk as disk
from tests.conftest import tiny_overrides
from zflight.callbacks.disk import DiskGuard
from zflight.train import main

FULL: dict[str, str | None] = {"under": None}  # a path part: writes below it find the disk full


def _enospc(*args: object) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def full_disk(monkeypatch):
    real_mkstemp, real_open = tempfile.mkstemp, open

    def mkstemp(*args, **kwargs):
        where = str(kwargs.get("dir", ""))
        if FULL["under"] and FULL["under"] in Path(where).parts:
            raise _enospc()
        return real_mkstemp(*args, **kwargs)

    def guarded_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "a" in mode and FULL["under"] and FULL["under"] in Path(path).parts:
            write = f.write

            def half_then_full(data):  # some bytes reach the file, then the disk is full
                write(data[: len(data) // 2])
                f.flush()
                raise _enospc()

            f.write = half_then_full
        return f

    monkeypatch.setattr(disk.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(disk, "open", guarded_open, raising=False)
    FULL["under"] = None
    yield FULL
    FULL["under"] = None


class FillAt(pl.Callback):
    """From the start of epoch ``epoch`` on, the disk under ``under`` is full."""

    def __init__(self, epoch: int = 1, under: str = "viz") -> None:
        self.epoch, self.under = epoch, under

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            FULL["under"] = self.under


def test_guard_keeps_the_old_file_warns_once_and_counts(tmp_path, full_disk):
    guard = DiskGuard()
    box = tmp_path / "box"
    assert guard.write_text(box / "index.html", "old", "gallery page")
    assert guard.append_text(box / "s.jsonl", '{"a": 1}\n', "line")
    full_disk["under"] = "box"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not guard.write_text(box / "index.html", "new", "gallery page")
        assert not guard.save(box / "p.png", "picture", lambda f: f.write(b"x"))
        assert not guard.append_text(box / "s.jsonl", '{"a": 2}\n', "line")
    assert len(caught) == 1 and "the disk is full" in str(caught[0].message)
    assert (box / "index.html").read_text() == "old" and not (box / "p.png").exists()
    assert (box / "s.jsonl").read_text() == '{"a": 1}\n', "the half line was cut off again"
    assert sorted(p.name for p in box.iterdir()) == ["index.html", "s.jsonl"]
    summary = guard.summary()
    assert "1 gallery page (first" in summary and "1 picture" in summary and "1 line" in summary


def test_pictures_lost_to_a_full_disk_are_named_and_training_goes_on(
    tmp_path, full_disk, capsys, recwarn
):
    run = tmp_path / "run"
    fill = "callbacks.fill._target_=tests.test_disk.FillAt"
    rec = "callbacks.rec._target_=tests.helpers.Recording"
    code = main(tiny_overrides(run, "trainer.max_epochs=2", fill, rec))
    out, err = capsys.readouterr()
    assert code == 0, err
    said = [w for w in recwarn if "the disk is full" in str(w.message)]
    assert len(said) == 1, "warned once, not once per file"
    assert "not written, the disk was full:" in out and "picture" in out
    pictures = sorted(p.name for p in (run / "viz").rglob("epoch_*.png"))
    assert pictures and all(name == "epoch_0000.png" for name in pictures)
    lines = (run / "viz" / "scalars.jsonl").read_text().splitlines()
    assert all(json.loads(line)["epoch"] == 0 for line in lines), "whole lines of epoch 0 only"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2


def test_a_checkpoint_that_cannot_be_written_stops_the_run(tmp_path, full_disk, capsys):
    run = tmp_path / "run"
    fill = "callbacks.fill._target_=tests.test_disk.FillAt"
    code = main(
        tiny_overrides(run, "trainer.max_epochs=3", fill, "callbacks.fill.under=checkpoints")
    )
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "the disk is full: could not write" in lines[0]
    assert "training stopped" in lines[0] and "Traceback" not in err
    kept = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert kept["epoch"] == 0, "the previous last.ckpt is whole"


def test_resume_on_a_full_disk_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from collections import namedtuple

    import zflight.run.extend as extend

    run = tmp_path / "run"
    assert main(tiny_overrides(run, "trainer.max_epochs=1")) == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    capsys.readouterr()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(extend.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1 << 20))
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(tiny_overrides(run, "trainer.max_epochs=2", f"resume={ckpt}")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 MiB free on its disk, a resumed run needs about" in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
