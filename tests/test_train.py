"""End-to-end training: run directory, checkpoints, resume, W&B offline, DDP on CPU."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_overrides
from tests.test_cli import hashes
from zflight.run.build import wandb_mode
from zflight.train import main, train


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_train_writes_run_dir_and_checkpoints(tiny, capsys):
    r = train(tiny())
    run = Path(r["run_dir"])
    assert (run / "config.yaml").read_text().count("max_epochs: 2") == 1
    assert (run / "checkpoints" / "last.ckpt").exists() and Path(r["best_ckpt"]).exists()
    assert 0.0 <= r["val_acc1"] <= r["val_acc5"] <= 1.0
    out = capsys.readouterr().out
    assert "final validation accuracy: top-1" in out and str(run) in out
    rows = [row for row in read_metrics(run) if row["val/acc1"]]
    assert [int(row["epoch"]) for row in rows] == [0, 1]


def test_resume_continues_where_it_stopped(tmp_path):
    run = tmp_path / "run"
    train(tiny_overrides(run, "trainer.max_epochs=1", "optim.schedule=step"))
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert first["epoch"] == 1, "Lightning records the number of finished epochs in last.ckpt"
    r = train(
        tiny_overrides(
            run,
            "trainer.max_epochs=3",
            "optim.schedule=step",
            f"resume={run / 'checkpoints' / 'last.ckpt'}",
        )
    )
    assert r["epochs"] == 3
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 3 and last["global_step"] == 3 * first["global_step"]
    epochs = [int(row["epoch"]) for row in read_metrics(run) if row["val/acc1"]]
    assert epochs[-2:] == [1, 2] and epochs.count(0) <= 1, (
        "the resumed run trains epochs 1 and 2 only"
    )


def test_wandb_offline_run_holds_metrics(tiny, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(Path(tiny()[-1].split("=", 1)[1]).parent))  # no ~/.netrc
    assert wandb_mode("auto") == "offline"
    r = train(tiny("logger=wandb"))
    offline = list(Path(r["run_dir"]).glob("wandb/offline-run-*"))
    assert len(offline) == 1, "one offline run, written without a login prompt"
    records = (next(offline[0].glob("run-*.wandb"))).read_bytes()
    for key in (b"val/acc1", b"val/acc5", b"train/loss", b"trainer/global_step"):
        assert key in records
    # the history record of the last epoch carries the final accuracy as its JSON value
    value = re.escape(json.dumps(r["val_acc1"]).encode())
    assert re.search(rb"val/acc1\x82\x01." + value, records, re.DOTALL)
    assert (Path(r["run_dir"]) / "wandb-id.txt").read_text().strip() in offline[0].name


def test_failed_resume_leaves_the_run_as_it_was(tiny, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    r = train(tiny("logger=wandb", "trainer.max_epochs=1"))
    run = Path(r["run_dir"])
    last = run / "checkpoints" / "last.ckpt"
    garbage = run / "checkpoints" / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    older = run / "checkpoints" / "older.ckpt"  # written before checkpoints carried the config
    torch.save({**torch.load(last, weights_only=False), "zflight_config": None}, older)
    before = hashes(run)
    assert len(list(run.glob("wandb/offline-run-*"))) == 1 and "config.yaml" in before
    cases = {
        f"resume={last} model.width=0.25": "was trained with model.width=0.125, the config says",
        f"resume={last} data.image_size=56": "was trained with data.image_size=64",
        f"resume={last} model=alexnet_style": "was trained with model.name=zfnet",
        f"resume={older} model.width=0.25": "model.features.conv1.weight has shape (12, 3, 7, 7)",
        f"resume={garbage}": "not a readable checkpoint (UnpicklingError",
        f"resume={run / 'checkpoints' / 'gone.ckpt'}": "gone.ckpt: no such file",
    }
    for args, says in cases.items():
        assert main(tiny("logger=wandb", *args.split())) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, (args, err)
        assert hashes(run) == before, "config.yaml, the W&B directory, every file: unchanged"


def test_resume_outside_a_run_is_one_error_and_no_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(b"x")
    args = [a for a in tiny_overrides(tmp_path / "r") if not a.startswith("run_dir=")]
    assert main([*args, f"resume={loose}", f"runs_root={tmp_path / 'runs'}"]) == 2
    assert "is not inside a run directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loose.ckpt"], "no stray directory"


@pytest.mark.slow
def test_diverging_run_stops_with_the_step_and_exit_1(tmp_path):
    # SGD at lr 1e4: the loss is NaN after two steps
    run = tmp_path / "run"
    args = ["optim.name=sgd", "optim.lr=1e4", "optim.schedule=none", "trainer.max_epochs=3"]
    p = _run([sys.executable, "-m", "zflight.train", *tiny_overrides(run, *args)])
    assert p.returncode == 1, p.stderr[-3000:]
    err = p.stderr.strip().splitlines()[-1]
    assert err.startswith("error: training diverged: the loss is nan at epoch 0, batch ")
    assert "No checkpoint was written before that" in err
    assert "final validation accuracy" not in p.stdout and "Traceback" not in p.stderr
    assert not (run / "checkpoints").exists(), "no checkpoint holds NaN weights"


def test_divergence_after_a_good_epoch_names_last_checkpoint(tiny, capsys):
    code = main(
        tiny("trainer.max_epochs=3", "callbacks.poison._target_=tests.train_helpers.PoisonAt")
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    run = Path(tiny()[-1].split("=", 1)[1])
    assert code == 1
    assert err.startswith(
        "error: training diverged: the loss is nan at epoch 1, batch 0 (global step 4); "
        "training stopped. The last finite weights are in "
    )
    assert f"{run / 'checkpoints' / 'last.ckpt'} (end of epoch 0): resume=" in err
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (0, 4)
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


@pytest.mark.slow
def test_divergence_under_ddp_stops_every_rank_with_one_message(tmp_path):
    run = tmp_path / "ddp"
    poison = "callbacks.poison._target_=tests.train_helpers.PoisonAt"
    args = tiny_overrides(run, "trainer.devices=2", "trainer.max_epochs=3", poison)
    p = _run([sys.executable, "-m", "zflight.train", *args], timeout=240)
    assert p.returncode == 1, p.stderr[-3000:]
    assert p.stderr.count("error: training diverged") == 1, "said once, by rank 0"
    assert "at epoch 1, batch 0" in p.stderr and "(end of epoch 0)" in p.stderr
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["epoch"] == 0 and torch.isfinite(saved["state_dict"][WEIGHT]).all()


WEIGHT = "model.features.conv1.weight"


def _run(
    args: list[str], env_extra: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )


@pytest.mark.slow
def test_ddp_two_cpu_processes_log_once(tmp_path):
    run = tmp_path / "ddp"
    p = _run([sys.executable, "-m", "zflight.train", *tiny_overrides(run, "trainer.devices=2")])
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("final validation accuracy") == 1, "only rank 0 prints the summary"
    rows = [row for row in read_metrics(run) if row["val/acc1"]]
    assert [int(row["epoch"]) for row in rows] == [0, 1], "metrics logged once per epoch"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
@pytest.mark.parametrize("devices", ["trainer.devices=2", "trainer.devices=auto"])
def test_torchrun_two_processes_form_one_ddp_run(tmp_path, devices):
    # no run_dir: the workers, started separately, must still agree on one dated directory
    args = [
        a for a in tiny_overrides(tmp_path, devices, "trainer.max_epochs=1") if "run_dir" not in a
    ]
    p = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "-m",
            "zflight.train",
            *args,
            f"runs_root={tmp_path / 'runs'}",
        ]
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("final validation accuracy") == 1
    (run,) = (tmp_path / "runs").iterdir()
    assert sorted(c.name for c in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2, "one DDP group of two: each rank takes 2 of the 4 batches"


def test_torchrun_environment_sets_processes(monkeypatch):
    from zflight.run.run_dir import torchrun_processes

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert torchrun_processes() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert torchrun_processes() == (4, 2)


def test_console_script_help_and_config_error():
    p = _run([sys.executable, "-m", "zflight", "train", "trainer.max_epoch=1"])
    assert p.returncode == 2 and p.stderr.startswith(
        "error: unknown config key 'trainer.max_epoch'"
    )
    p = _run([sys.executable, "-m", "zflight", "--help"])
    assert p.returncode == 0 and "visualize" in p.stdout


FAULTS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from zflight.run.memory import keep_freed_memory
    assert keep_freed_memory()
for _ in range(10):  # 48 MiB: above glibc's largest automatic mmap threshold; let the heap settle
    torch.empty(12 << 20).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(12 << 20).fill_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_page_faults_on_reallocation():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    system, keep = faults("system"), faults("keep")
    pages = 20 * (48 << 20) // 4096
    assert system >= 0.9 * pages, "each 48 MiB allocation faults in fresh pages by default"
    assert keep <= 0.1 * system
