"""Where a run lives: the run directory (given, the resumed checkpoint's run, or a new dated one that
all ranks agree on), checked for writing before anything is put there. Standard library only."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from omegaconf import DictConfig

from zflight.config import ConfigError
from zflight.run.lock import claim_new_directory, launching_process

_DATED = "ZFLIGHT_RUN_DIR_NEW"


def run_of_checkpoint(ckpt: Path) -> Path | None:
    """The run a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` beside ``<run>/config.yaml``)."""
    run = ckpt.parent.parent
    if ckpt.parent.name == "checkpoints" and (run / "config.yaml").is_file():
        return run
    return None


def resolve_run_dir(cfg: DictConfig) -> Path:
    """The run's directory: given, the resumed checkpoint's run, or a new dated one shared by all ranks.

    Creates nothing. A ``resume=`` checkpoint outside a run needs ``run_dir=`` to say where to go."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if cfg.resume:
        ckpt = Path(cfg.resume)
        if not ckpt.is_file():
            raise ConfigError(f"resume={cfg.resume}: no such file")
        run = run_of_checkpoint(ckpt)
        if run is None:
            raise ConfigError(
                f"resume={cfg.resume} is not inside a run directory (<run>/checkpoints/*.ckpt beside "
                f"<run>/config.yaml); give run_dir=DIR to say where the continued run goes"
            )
        return run
    if "ZFLIGHT_RUN_DIR" not in os.environ:  # set once so DDP ranks launched from here agree
        # torchrun's workers start separately: they agree on their launcher's start time
        when = (torchrun_processes() and _parent_start_time()) or time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
        os.environ["ZFLIGHT_RUN_DIR"] = str(Path(cfg.runs_root) / f"{stamp}-{cfg.name}")
        os.environ[_DATED] = "1"  # this process chose the name: it claims it (claim_run_dir)
    return Path(os.environ["ZFLIGHT_RUN_DIR"])


def claim_run_dir(run_dir: Path) -> Path:
    """Create the run directory; a dated one this process chose gets a ``-2``, ``-3``... suffix
    when another run took its name first (the DDP ranks it starts inherit the final name)."""
    dated_here = os.environ.pop(_DATED, None) == "1"
    if dated_here and launching_process() and not torchrun_processes():  # workers share a name
        run_dir = claim_new_directory(run_dir)
        os.environ["ZFLIGHT_RUN_DIR"] = str(run_dir)
    return run_dir


def ensure_writable(directory: Path, key: str = "run_dir") -> None:
    """Create ``directory`` and write a file there, or raise one ConfigError naming the cause."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(directory) else ""
        raise ConfigError(
            f"{key}: cannot write to {directory}: {exc.strerror or exc}{where}"
        ) from None


def torchrun_processes() -> tuple[int, int] | None:
    """(processes per node, nodes) when torchrun started this process, else None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or "LOCAL_WORLD_SIZE" not in os.environ:
        return None
    local, world = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ.get("WORLD_SIZE", "1"))
    return local, max(1, world // local)


def _parent_start_time() -> float | None:
    """Wall-clock start of the parent process (Linux ``/proc``), None where unknown."""
    try:
        with open(f"/proc/{os.getppid()}/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
