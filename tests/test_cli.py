"""Every bad input is one line and exit code 2, before anything is written; --help, print_config;
a config error appears before torch is imported."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from zflight.train import main

ROOT = Path(__file__).resolve().parent.parent


def hashes(root: Path) -> dict[str, str]:
    """Every file's digest and every directory (empty ones too) under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


def one_line_error(capsys, code: int, says: str) -> str:
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert says in err, err
    return err


def test_config_error_before_torch_is_imported():
    code = (
        "import sys; from zflight.train import main; rc = main(['trainer.max_epoch=3']); "
        "print(rc, sorted(m for m in ('torch', 'lightning', 'wandb') if m in sys.modules))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.stdout.split("\n")[0] == "2 []", p.stdout + p.stderr
    assert p.stderr.startswith("error: unknown config key 'trainer.max_epoch' (did you mean")


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "zflight.train", "--help"],
        ["-m", "zflight", "--help"],
        ["-m", "zflight", "train", "-h"],
    ],
)
def test_help_prints_usage_keys_and_groups(command):
    p = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and p.stderr == ""
    out = p.stdout
    assert out.startswith("usage:") and "zflight" in out
    assert "  logger=csv|none|tensorboard|wandb" in out and "callbacks=default|none" in out
    assert "model.{name,width," in out and "trainer.{accelerator,devices," in out


def test_visualize_help():
    p = subprocess.run(
        [sys.executable, "-m", "zflight", "visualize", "--help"], capture_output=True, text=True
    )
    assert p.returncode == 0 and p.stdout.startswith("usage: python -m zflight.visualize ckpt=")
    assert "out=DIR" in p.stdout


def test_print_config_prints_resolved_config_and_exits(tmp_path, capsys):
    assert main(["print_config=true", "model.width=0.5", f"run_dir={tmp_path / 'r'}"]) == 0
    out = capsys.readouterr().out
    assert "  width: 0.5\n" in out and "deconv:\n    _target_: zflight.callbacks.deconv" in out
    assert not (tmp_path / "r").exists(), "nothing is created"


def test_bad_inputs_are_one_line_exit_2_and_create_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = {
        "resume=" + str(tmp_path / "nope.ckpt"): "nope.ckpt: no such file",
        "trainer.accelerator=gpu trainer.devices=4": "this machine has 0 GPUs",
        "callbacks=default callbacks.deconv.selction=most_active": (
            "callbacks.deconv.selction: zflight.callbacks.deconv.DeconvTopK has no argument "
            "'selction' (did you mean callbacks.deconv.selection?); valid: layers, "
        ),
        f"run_dir={blocker / 'run'}": f"run_dir: cannot write to {blocker / 'run'}: Not a directory",
        "optim.name=adam": "optim.name='adam' is not valid",
    }
    if torch_cuda_count() > 0:
        del cases["trainer.accelerator=gpu trainer.devices=4"]
    for args, says in cases.items():
        code = main([*tiny_overrides(run), *args.split()])
        one_line_error(capsys, code, says)
    assert not run.exists()


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_runs_root(tmp_path, capsys):
    root = tmp_path / "runs"
    root.mkdir()
    root.chmod(0o555)
    try:
        args = [a for a in tiny_overrides(tmp_path) if not a.startswith("run_dir=")]
        code = main([*args, f"runs_root={root}"])
        one_line_error(capsys, code, "Permission denied")
    finally:
        root.chmod(0o755)


@pytest.mark.slow
def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "zflight",
            "train",
            *tiny_overrides(tmp_path / "r", "callbacks=default", "callbacks.deconv.selction=x"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr + p.stdout
    assert p.stderr.strip().splitlines()[-1].startswith("error: callbacks.deconv.selction:")


def test_existing_run_directory_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    # what a read-only mount gives even to root (who ignores chmod): EROFS on creating a file
    import errno

    import zflight.run.run_dir

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))

    monkeypatch.setattr(zflight.run.run_dir.tempfile, "mkstemp", read_only)
    (tmp_path / "run").mkdir()
    code = main(tiny_overrides(tmp_path / "run"))
    one_line_error(
        capsys, code, f"run_dir: cannot write to {tmp_path / 'run'}: Read-only file system"
    )
    assert list((tmp_path / "run").iterdir()) == []
