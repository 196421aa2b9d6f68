"""last.ckpt every epoch, atomically: kill -9 at several moments, Ctrl-C, a full disk, then resume;
a resume is checked before the run is touched."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from tests.train_helpers import LastSeen
from zflight.config import ConfigError
from zflight.run.checkpoints import atomic_save, finished_epoch, read_checkpoint
from zflight.train import train

ROOT = Path(__file__).resolve().parent.parent


def test_atomic_save_keeps_the_old_file_when_the_disk_fills(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_save({"epoch": 1, "w": torch.arange(5)}, path)
    real = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")  # some bytes reach the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"epoch": 2, "w": torch.zeros(5)}, path)
    monkeypatch.setattr(torch, "save", real)
    kept = torch.load(path, weights_only=False)
    assert kept["epoch"] == 1 and kept["w"].tolist() == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"], "no temporary file left"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_read_checkpoint_names_what_is_wrong(tmp_path):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "garbage.ckpt").write_bytes(os.urandom(4096))
    atomic_save({"epoch": 3}, tmp_path / "nostate.ckpt")
    whole = tmp_path / "whole.ckpt"
    atomic_save({"epoch": 3, "state_dict": {"w": torch.ones(2)}}, whole)
    (tmp_path / "cut.ckpt").write_bytes(whole.read_bytes()[:300])
    cases = {
        "missing.ckpt": "no such file",
        "empty.ckpt": "not a readable checkpoint (EOFError",
        "garbage.ckpt": "not a readable checkpoint (UnpicklingError",
        "cut.ckpt": "not a readable checkpoint (RuntimeError",
        "nostate.ckpt": "not a training checkpoint",
    }
    for name, says in cases.items():
        with pytest.raises(ConfigError) as e:
            read_checkpoint(tmp_path / name, "resume")
        assert str(e.value).startswith(f"resume={tmp_path / name}") and says in str(e.value)
        assert "\n" not in str(e.value)
    assert read_checkpoint(whole, "ckpt")["state_dict"]["w"].tolist() == [1.0, 1.0]


def test_finished_epoch_from_loop_progress():
    def ckpt(epoch, processed, completed):
        progress = {"processed": processed, "completed": completed}
        return {"epoch": epoch, "loops": {"fit_loop": {"epoch_progress": {"current": progress}}}}

    assert finished_epoch(ckpt(2, 3, 2)) == 2, "saved at the end of epoch 2, before it completed"
    assert finished_epoch(ckpt(2, 2, 2)) == 2 - 1, "saved once training ended: 2 epochs done"
    assert finished_epoch({"epoch": 4}) == 4


def test_last_checkpoint_written_at_every_epoch_end(tmp_path):
    LastSeen.seen.clear()
    run = tmp_path / "run"
    r = train(tiny_overrides(run, "trainer.max_epochs=3", "callbacks.seen._target_=" + LAST_SEEN))
    # at the start of epoch e, last.ckpt holds the end of epoch e - 1 (Lightning's save_last: none)
    assert LastSeen.seen == [(0, None), (1, (0, 4)), (2, (1, 8))]
    final = torch.load(r["last_ckpt"], weights_only=False)
    assert (final["epoch"], final["global_step"]) == (3, 12), "and once more when training ends"
    assert final["zflight_config"]["model"]["width"] == 0.125, "the run's config travels along"
    assert not list((run / "checkpoints").glob(".*")), "no temporary file left"


LAST_SEEN = "tests.train_helpers.LastSeen"


def r_last(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture
def start(tmp_path):
    """Start a Python subprocess in the repository; kill it at teardown if a test failed early."""
    started: list[subprocess.Popen] = []

    def run(args: list[str]) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        log = open(tmp_path / "output.txt", "wb")  # a pipe nobody reads could fill and block
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        started.append(proc)
        return proc

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "training ended early"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _resume_to_the_end(run: Path, *extra: str) -> None:
    """last.ckpt loads, and resuming from it trains to the planned end (3 epochs, 12 steps)."""
    saved = read_checkpoint(run / "checkpoints" / "last.ckpt", "resume")
    assert saved["epoch"] in (0, 1, 2, 3) and torch.isfinite(saved["state_dict"][WEIGHT]).all()
    r = train(tiny_overrides(run, "trainer.max_epochs=3", f"resume={r_last(run)}", *extra))
    final = torch.load(r["last_ckpt"], weights_only=False)
    assert (final["epoch"], final["global_step"]) == (3, 12)
    assert not list((run / "checkpoints").glob(".*")), "a half-written temporary file is cleared"


WEIGHT = "model.features.conv1.weight"


def _slow_args(run: Path, delay: float) -> list[str]:
    progress = run.parent / "progress.txt"
    return tiny_overrides(
        run,
        "trainer.max_epochs=3",
        "callbacks.slow._target_=tests.train_helpers.SlowSteps",
        f"callbacks.slow.progress={progress}",
        f"callbacks.slow.delay={delay}",
    )


@pytest.mark.slow
def test_kill9_when_last_checkpoint_first_appears_then_resume(tmp_path, start):
    run = tmp_path / "run"
    proc = start(["-m", "zflight.train", *_slow_args(run, 0.2)])
    _wait_for(r_last(run).exists, proc)
    _kill9(proc)
    assert torch.load(r_last(run), weights_only=False)["epoch"] == 0, "the end of epoch 0"
    _resume_to_the_end(run)


@pytest.mark.slow
def test_kill9_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, start):
    run = tmp_path / "run"
    # the second write of last.ckpt (end of epoch 1) writes half its bytes and stalls there
    proc = start(["-m", "tests.train_helpers", "2", *tiny_overrides(run, "trainer.max_epochs=3")])
    _wait_for((tmp_path / "stalled").exists, proc)
    _kill9(proc)
    (partial,) = list((run / "checkpoints").glob(".last.ckpt.*.tmp"))
    assert 0 < partial.stat().st_size, "the interrupted write is a separate file"
    saved = torch.load(r_last(run), weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (0, 4), "last.ckpt still holds epoch 0, whole"
    _resume_to_the_end(run)


@pytest.mark.slow
def test_kill9_at_a_random_moment_then_resume(tmp_path, start):
    run = tmp_path / "run"
    moment = random.Random(os.getpid()).uniform(0.0, 1.2)  # in epochs 1-2 (>= 1.6 s of sleeps)
    proc = start(["-m", "zflight.train", *_slow_args(run, 0.2)])
    _wait_for(r_last(run).exists, proc)
    time.sleep(moment)
    _kill9(proc)
    _resume_to_the_end(run)


@pytest.mark.slow
def test_ctrl_c_saves_last_checkpoint_mid_epoch(tmp_path, start):
    run = tmp_path / "run"
    progress = tmp_path / "progress.txt"
    proc = start(["-m", "zflight.train", *_slow_args(run, 3.0)])
    _wait_for(lambda: progress.exists() and "1 1\n" in progress.read_text(), proc)
    proc.send_signal(signal.SIGINT)  # during the pause after epoch 1's second batch
    proc.wait(timeout=120)
    out = (tmp_path / "output.txt").read_text()
    assert proc.returncode == 1 and f"interrupted: saved {r_last(run)}" in out, out[-2000:]
    saved = torch.load(r_last(run), weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (1, 6), "4 steps of epoch 0, 2 of epoch 1"
    _resume_to_the_end(run)
