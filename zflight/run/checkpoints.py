"""Checkpoints that are there when needed and never half-written.

* ``atomic_save``: write to a temporary file in the same directory, fsync, then ``os.replace``: a
  kill or a full disk at any moment leaves the previous file whole (Lightning writes in place).
* ``LastCheckpoint``: ``last.ckpt`` when an epoch's training and validation end (before the
  analyses run, so a long analysis never delays it), at the end of every epoch, at the end of
  training, on Ctrl-C and on a stop signal (Lightning's ``save_last`` writes it only when training
  ends), never from non-finite weights; every checkpoint also carries the run's config, for checking
  a resume against it, and the state of callbacks a resumed run no longer has (their histories).
* ``read_checkpoint`` / ``check_matches``: a checkpoint is readable and fits the model the config
  builds, checked before a resumed run writes anything (one line naming the difference).
"""

from __future__ import annotations

import errno
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from zflight.callbacks.disk import DISK, no_space
from zflight.config import ConfigError
from zflight.run.commands import RunFailure

# Settings a checkpoint's weights and inputs depend on: a resume or a post-hoc run must match them.
MATCH_KEYS = ("model.name", "model.width", "model.head_pool", "data.name", "data.image_size")
CONFIG_KEY = "zflight_config"


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that it holds either the old or the new file, whole (through
    the run's one guarded write path); OSError(ENOSPC) when the disk had no room."""
    if not DISK.save(path, "checkpoint", lambda f: torch.save(obj, f)):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))


class DiskFull(RunFailure):
    """A checkpoint could not be written for lack of space: the run stops here (exit code 1)."""


def disk_full(path: str | Path, exc: OSError) -> DiskFull:
    run = Path(path).parent
    return DiskFull(
        f"the disk is full: could not write {path} ({exc.strerror or exc}); training stopped. "
        f"The previous checkpoints are whole: free some space, then "
        f"resume={run / 'last.ckpt'} continues"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer with ``atomic_save``: ``best.ckpt`` is never half-written either."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        try:
            atomic_save(checkpoint, path)
        except OSError as exc:
            if no_space(exc):
                raise disk_full(path, exc) from None
            raise


def weights_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class LastCheckpoint(pl.Callback):
    """Keeps ``path`` (``last.ckpt``) no older than one epoch; adds ``config`` to every checkpoint.

    Attributes:
        saved_epoch: the epoch of the last save by this process (None before the first).
    """

    def __init__(
        self, path: str | Path, config: dict[str, Any], carried: dict[str, Any] | None = None
    ) -> None:
        self.path = Path(path)
        self.config = config
        self.carried = dict(carried or {})
        self.saved_epoch: int | None = None
        self.saved_step: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and self.path.parent.is_dir():  # left by a kill during a save
            for stale in self.path.parent.glob(".*.ckpt.*.tmp"):  # last.ckpt's or best.ckpt's
                stale.unlink(missing_ok=True)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.config
        states = checkpoint.setdefault("callbacks", {})
        for key, state in self.carried.items():  # a resume with fewer callbacks keeps their state
            states.setdefault(key, state)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and _analyses_due(trainer):
            self.save(trainer, pl_module)  # listed before the visual callbacks: before they run

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer, pl_module)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        try:
            if isinstance(exception, KeyboardInterrupt):
                self.save(trainer, pl_module)
                if trainer.is_global_zero:
                    print(f"interrupted: saved {self.path}", flush=True)
            elif isinstance(exception, SIGTERMException):  # a stop signal (zflight.run.preemption)
                if self.saved_step != trainer.global_step:  # not saved since the last step
                    self.save(trainer, pl_module)
        except DiskFull as exc:
            warnings.warn(str(exc), stacklevel=1)

    def stopped_line(self, signal_name: str, epoch: int) -> str:
        """One line for a run stopped by a signal: what was saved and how to go on."""
        if self.saved_epoch is None:
            return (
                f"stopped by {signal_name} at epoch {epoch}: nothing was saved (no finite weights)"
            )
        return (
            f"stopped by {signal_name} at epoch {epoch}: saved {self.path} (epoch {self.saved_epoch}, "
            f"step {self.saved_step}); resume={self.path} continues"
        )

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write ``last.ckpt`` (rank 0; no collective, so it is safe in ``on_exception`` too)."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if not weights_finite(pl_module):
            if trainer.is_global_zero:
                warnings.warn(
                    f"weights are not finite: {self.path} keeps epoch {self.saved_epoch}",
                    stacklevel=1,
                )
            return
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        try:
            trainer.strategy.save_checkpoint(checkpoint, self.path)
        except DiskFull:
            raise
        except OSError as exc:  # the previous last.ckpt stays, training goes on
            if no_space(exc):
                raise disk_full(self.path, exc) from None
            warnings.warn(
                f"could not write {self.path} ({exc.strerror or exc}); the previous one is kept",
                stacklevel=1,
            )
            return
        self.saved_epoch = trainer.current_epoch
        self.saved_step = trainer.global_step


def _analyses_due(trainer: pl.Trainer) -> bool:
    """Whether a visual callback runs after this validation (then last.ckpt is written before it)."""
    from zflight.callbacks.base import VisualizationCallback

    return any(
        isinstance(cb, VisualizationCallback) and cb._should_run(trainer)
        for cb in trainer.callbacks
    )


def read_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """Load a checkpoint on the CPU (memory-mapped: weights are read when used); ConfigError if it
    is missing, unreadable or not a training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}={path}: no such file")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError as exc:  # not a zip file: perhaps the legacy format, perhaps garbage
            if "mmap" not in str(exc):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:160]
        raise ConfigError(
            f"{key}={path}: not a readable checkpoint ({type(exc).__name__}: {detail})"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"{key}={path}: not a training checkpoint (it has no state_dict)")
    return ckpt


def check_matches(
    ckpt: dict[str, Any], path: str | Path, key: str, cfg: DictConfig, module: torch.nn.Module
) -> None:
    """The config's model and data settings, and the module's parameter names and shapes, are the
    checkpoint's; else one ConfigError naming the first difference."""
    saved = ckpt.get(CONFIG_KEY)
    if isinstance(saved, dict):
        saved_cfg = OmegaConf.create(saved)
        for k in MATCH_KEYS:
            was, now = OmegaConf.select(saved_cfg, k), OmegaConf.select(cfg, k)
            if was is not None and was != now:
                raise ConfigError(
                    f"{key}={path} was trained with {k}={was}, the config says {k}={now}; "
                    f"pass {k}={was} (or start a new run)"
                )
    expected = module.state_dict()
    got = ckpt["state_dict"]
    for name, tensor in expected.items():
        if name not in got:
            raise ConfigError(
                f"{key}={path} has no {name}: it was written for another model than the config "
                f"builds (model.name, model.width, data.num_classes)"
            )
        if tuple(got[name].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"{key}={path}: {name} has shape {tuple(got[name].shape)}, the config builds "
                f"{tuple(tensor.shape)} (model.width, model.name or the number of classes differ)"
            )
    extra = sorted(set(got) - set(expected))
    if extra:
        raise ConfigError(
            f"{key}={path} holds {extra[0]}, which the model the config builds has not "
            f"(model.name or model settings differ)"
        )


def finished_epoch(ckpt: dict[str, Any]) -> int:
    """Index of the epoch whose weights the checkpoint holds (as the PNGs of that epoch are named).

    ``epoch`` counts completed epochs: saved during an epoch (its validation or its end) it is that
    epoch's index; saved once training ended, it is one more."""
    epoch = int(ckpt.get("epoch", 0))
    try:
        progress = ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]
        ended = progress["completed"] == progress["processed"] == epoch
    except (KeyError, TypeError):
        ended = False
    return max(epoch - 1, 0) if ended and epoch > 0 else epoch
