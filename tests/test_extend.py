"""Extending a run: ``resume=... trainer.max_epochs=N`` continues to N with the schedule rebuilt for
the new length; fewer epochs is one line and nothing written; logs and histories carry on."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from zflight.module import one_cycle
from zflight.train import main, train

STEPS_PER_EPOCH = 4  # tiny: 128 training images in batches of 32


def lr_by_step(run: Path) -> dict[int, float]:
    with open(run / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {int(r["step"]): float(r["optim/lr"]) for r in rows if r.get("optim/lr")}


def planned(schedule: str, epochs: int, warmup: int = 400) -> list[float]:
    """The learning rate at each step of a run planned for ``epochs`` from the start (the module's
    one-cycle and torch's cosine, stepped as Lightning steps them)."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.003)
    total = epochs * STEPS_PER_EPOCH
    if schedule == "onecycle":
        sched = one_cycle(opt, 0.003, total, 0.25, warmup)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    lrs = []
    for step in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if schedule == "onecycle" or (step + 1) % STEPS_PER_EPOCH == 0:
            sched.step()
    return lrs


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_resume_to_more_epochs_follows_the_longer_plan(tmp_path, schedule):
    run = tmp_path / "run"
    args = [f"optim.schedule={schedule}", "optim.name=adamw", "optim.lr=0.003"]
    train(tiny_overrides(run, "trainer.max_epochs=2", *args))
    r = train(
        tiny_overrides(
            run, "trainer.max_epochs=4", *args, f"resume={run / 'checkpoints' / 'last.ckpt'}"
        )
    )
    assert r["epochs"] == 4
    seen, want = lr_by_step(run), planned(schedule, 4)
    resumed = [s for s in sorted(seen) if s >= 2 * STEPS_PER_EPOCH]
    assert len(resumed) == 2 * STEPS_PER_EPOCH, "every step of epochs 2 and 3 was logged"
    for step in resumed:  # from the resume point on: the 4-epoch plan, step for step
        assert seen[step] == pytest.approx(want[step], rel=1e-6), step
    first = [s for s in sorted(seen) if s < 2 * STEPS_PER_EPOCH]
    assert len(first) == 2 * STEPS_PER_EPOCH, "metrics.csv kept the first session's rows"
    assert seen[2 * STEPS_PER_EPOCH + 1] > 0


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "step"])
def test_resume_to_fewer_epochs_is_one_line_and_writes_nothing(tmp_path, capsys, schedule):
    run = tmp_path / "run"
    train(tiny_overrides(run, "trainer.max_epochs=2", f"optim.schedule={schedule}"))
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    capsys.readouterr()
    ckpt = run / "checkpoints" / "last.ckpt"
    code = main(
        tiny_overrides(run, "trainer.max_epochs=1", f"resume={ckpt}", f"optim.schedule={schedule}")
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "trainer.max_epochs=1 is fewer than the 2 epochs" in err[0]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    code = main(
        tiny_overrides(run, "trainer.max_epochs=2", f"resume={ckpt}", f"optim.schedule={schedule}")
    )
    out = capsys.readouterr().out
    assert code == 0 and "nothing to do" in out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_callback_history_survives_a_resume_without_that_callback(tmp_path):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    evo = [
        "callbacks=none",
        "callbacks.evolution._target_=zflight.callbacks.evolution.FeatureEvolution",
    ]
    train(tiny_overrides(run, "trainer.max_epochs=1", *evo))
    keys = [k for k in torch.load(ckpt, weights_only=False)["callbacks"] if "Evolution" in k]
    assert keys
    history = torch.load(ckpt, weights_only=False)["callbacks"][keys[0]]
    train(tiny_overrides(run, "trainer.max_epochs=2", f"resume={ckpt}"))  # no callbacks
    kept = torch.load(ckpt, weights_only=False)["callbacks"]
    assert keys[0] in kept
    assert kept[keys[0]].keys() == history.keys()


def test_tensorboard_events_of_the_first_session_are_kept(tmp_path):
    run = tmp_path / "run"
    train(tiny_overrides(run, "trainer.max_epochs=1", "logger=tensorboard"))
    first = {p: p.stat().st_size for p in (run / "tensorboard").rglob("events.out.tfevents.*")}
    assert first
    train(
        tiny_overrides(
            run,
            "trainer.max_epochs=2",
            "logger=tensorboard",
            f"resume={run / 'checkpoints' / 'last.ckpt'}",
        )
    )
    after = {p: p.stat().st_size for p in (run / "tensorboard").rglob("events.out.tfevents.*")}
    assert all(after.get(p) == size for p, size in first.items()), "the first file is untouched"
    assert len(after) == len(first) + 1, "the resumed session adds its own event file"
