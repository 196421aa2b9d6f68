"""EpochRowWandbLogger: one W&B row per epoch, written once no output of that epoch is on its way."""

from __future__ import annotations

from pathlib import Path

import pytest

from zflight.run.wandb_rows import EpochRowWandbLogger, merge_epoch, wandb_dirs


class FakeRun:
    """Records ``log`` calls as W&B would write rows."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log(self, data: dict, commit: bool = True) -> None:
        self.rows.append(dict(data))


def logger_with(ready: list[bool]) -> tuple[EpochRowWandbLogger, FakeRun]:
    run = FakeRun()
    logger = EpochRowWandbLogger(project="p", experiment=run, ready=lambda: ready[0])
    return logger, run


def test_merge_epoch_averages_training_scalars_and_keeps_the_last_of_the_rest():
    row = merge_epoch(
        {
            "train/loss": [2.0, 1.0, 0.0],
            "train/acc": [0.5],
            "optim/lr": [0.1, 0.2],
            "val/acc1": [0.7],
            "deconv/conv1": [["a"], ["b"]],
        }
    )
    assert row == {
        "train/loss": 1.0,
        "train/acc": 0.5,
        "optim/lr": 0.2,
        "val/acc1": 0.7,
        "deconv/conv1": ["b"],
    }


def test_one_row_per_epoch_even_when_pictures_arrive_after_the_next_epoch_began():
    ready = [True]
    logger, run = logger_with(ready)
    logger.log_metrics({"train/loss": 2.0, "epoch": 0}, step=19)
    logger.log_metrics({"train/loss": 1.0, "epoch": 0}, step=39)
    logger.log_metrics({"val/acc1": 0.4, "epoch": 0}, step=49)
    ready[0] = False  # the background writer still encodes epoch 0's pictures
    logger.log_metrics({"deconv/score": 0.3, "epoch": 0}, step=49)
    logger.log_metrics({"train/loss": 0.5, "epoch": 1}, step=69)
    logger.log_metrics({"optim/lr": 0.01}, step=69)  # no epoch: the latest one's
    assert run.rows == [], "epoch 0 is written only when its output is all there"
    logger.log_metrics({"deconv/conv1": "picture", "epoch": 0}, step=49)  # late, from the writer
    ready[0] = True
    logger.log_metrics({"train/loss": 0.25, "epoch": 1}, step=89)
    assert run.rows == [
        {
            "train/loss": 1.5,
            "epoch": 0,
            "trainer/global_step": 49,
            "val/acc1": 0.4,
            "deconv/score": 0.3,
            "deconv/conv1": "picture",
        }
    ]
    logger.log_metrics({"val/acc1": 0.6, "epoch": 1}, step=99)
    logger.finalize("success")
    assert run.rows[1] == {
        "train/loss": 0.375,
        "epoch": 1,
        "trainer/global_step": 99,
        "optim/lr": 0.01,
        "val/acc1": 0.6,
    }
    assert len(run.rows) == 2


def test_a_value_for_an_epoch_already_written_is_not_lost():
    logger, run = logger_with([True])
    logger.log_metrics({"val/acc1": 0.4, "epoch": 0}, step=9)
    logger.log_metrics({"train/loss": 1.0, "epoch": 1}, step=19)
    logger.log_metrics({"late": 1.0, "epoch": 0}, step=9)
    assert run.rows[-1] == {"late": 1.0, "epoch": 0, "trainer/global_step": 9}


def test_wandb_folders_are_inside_the_run_directory(tmp_path):
    dirs = wandb_dirs(tmp_path / "run")
    assert set(dirs) == {"WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR", "WANDB_CACHE_DIR"}
    assert all(Path(p).is_relative_to(tmp_path / "run") for p in dirs.values())


@pytest.mark.parametrize("epoch", [0.0, 3])
def test_epoch_as_float_or_int(epoch):
    logger, run = logger_with([True])
    logger.log_metrics({"x": 1.0, "epoch": epoch}, step=1)
    logger.commit_rows()
    assert run.rows == [{"x": 1.0, "epoch": epoch, "trainer/global_step": 1}]


class Refusing(FakeRun):
    """Refuses a row that holds a picture, as W&B does for a value it cannot serialise."""

    def log(self, data: dict, commit: bool = True) -> None:
        if any(not isinstance(v, (int, float, str)) for v in data.values()):
            raise ValueError("cannot serialise")
        super().log(data, commit)


def test_a_row_that_cannot_be_logged_keeps_its_numbers_and_the_run_goes_on():
    run = Refusing()
    logger = EpochRowWandbLogger(project="p", experiment=run)
    logger.log_metrics({"val/acc1": 0.5, "deconv/conv1": object(), "epoch": 0}, step=9)
    with pytest.warns(UserWarning, match="could not log epoch 0 to W&B .* without deconv/conv1"):
        logger.commit_rows()
    assert run.rows == [{"val/acc1": 0.5, "epoch": 0, "trainer/global_step": 9}]


def test_the_logger_pickles_for_spawned_processes():
    import pickle

    logger = EpochRowWandbLogger(project="p")
    assert pickle.loads(pickle.dumps(logger.__dict__["_ready"]))() in (True, False)
