"""Checks before a resumed run writes anything: the epochs left to train and the space on the disk.

``resume=RUN/checkpoints/last.ckpt trainer.max_epochs=N`` continues the run to ``N`` epochs (the
schedule is stretched to the new length by ``zflight.schedules``). An ``N`` below the epochs
already trained is one line and exit code 2; an ``N`` equal to them leaves nothing to do.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from zflight.config import ConfigError
from zflight.run.commands import NothingToDo

# room a resumed run needs beyond its checkpoints (PNGs, logs, the gallery): 64 MiB
SPARE_BYTES = 64 << 20


def epochs_trained(ckpt: dict[str, Any]) -> int:
    """Epochs whose training batches the checkpoint has seen to the end."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return int(ckpt.get("epoch", 0))


def check_resume(ckpt: dict[str, Any], cfg: DictConfig, run_dir: Path) -> None:
    """ConfigError when ``trainer.max_epochs`` is below the epochs already trained or the disk
    cannot take the next checkpoints; ``NothingToDo`` when the run is already at ``max_epochs``."""
    done, wanted = epochs_trained(ckpt), int(cfg.trainer.max_epochs)
    if wanted < done:
        raise ConfigError(
            f"trainer.max_epochs={wanted} is fewer than the {done} epochs resume={cfg.resume} "
            f"has already trained; pass trainer.max_epochs={done + 1} or more to continue it"
        )
    if wanted == done:
        raise NothingToDo(
            f"resume={cfg.resume} has already trained {done} epochs (trainer.max_epochs={wanted}); "
            f"nothing to do. Pass trainer.max_epochs={done + 1} or more to continue it"
        )
    check_free_space(run_dir, Path(cfg.resume).stat().st_size)


def check_free_space(run_dir: Path, checkpoint_bytes: int) -> None:
    """The disk of ``run_dir`` holds two more checkpoints (``last.ckpt`` and ``best.ckpt`` are
    written beside their old versions first) and some room for pictures; else a ConfigError."""
    where = run_dir if run_dir.exists() else next(p for p in run_dir.parents if p.exists())
    free = shutil.disk_usage(where).free
    needed = 2 * checkpoint_bytes + SPARE_BYTES
    if free < needed:
        raise ConfigError(
            f"run_dir={run_dir}: {free / 2**20:.0f} MiB free on its disk, a resumed run needs about "
            f"{needed / 2**20:.0f} MiB (two checkpoints of {checkpoint_bytes / 2**20:.0f} MiB and "
            f"room for pictures); free some space first"
        )
