"""Shared fixtures: a tiny, fast training configuration and an offline W&B."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)
os.environ.setdefault("PYTHONWARNINGS", "ignore")


def tiny_overrides(run_dir: Path, *extra: str) -> list[str]:
    """A run that takes seconds: 32 px shapes, a narrow ZFNet, two epochs, CSV logging."""
    return [
        "data.train_size=128",
        "data.val_size=32",
        "data.image_size=64",
        "data.batch_size=32",
        "data.cache_dir=null",
        "model.width=0.125",
        "model.head_pool=1",
        "trainer.max_epochs=2",
        "trainer.progress=false",
        "trainer.log_every_n_steps=1",
        "trainer.accelerator=cpu",
        "logger=csv",
        "callbacks=none",
        f"run_dir={run_dir}",
        *extra,
    ]


@pytest.fixture
def tiny(tmp_path):
    return lambda *extra: tiny_overrides(tmp_path / "run", *extra)


@pytest.fixture
def one_thread():
    """Many small ops: on a shared 2-core machine one thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_run_name():
    """A dated run name is chosen once per process (``ZFLIGHT_RUN_DIR``, inherited by the ranks it
    starts): a test that trains in-process must not hand its name to the next test's subprocesses."""
    yield
    for key in ("ZFLIGHT_RUN_DIR", "ZFLIGHT_RUN_DIR_NEW"):
        os.environ.pop(key, None)
