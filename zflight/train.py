"""``python -m zflight.train key=value ...``: check the config, then build everything and train.

Order matters: the config (no torch yet: errors in well under 2 s), then GPUs and callback
arguments, then a ``resume=`` checkpoint against the model the config builds; only then is anything
in the run directory written or the logger opened, so a bad input leaves a run as it was."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from zflight.config import ConfigError, analysis_budget, load_config, to_yaml
from zflight.run.commands import TRAIN_USAGE, RunFailure, pop_flag, run_command, usage

# Names that lived here before zflight.run.build and zflight.run.run_dir held them (imported on use).
_MOVED = {
    **dict.fromkeys(
        ("build_datamodule", "build_model", "build_logger", "build_callbacks", "wandb_mode"),
        "zflight.run.build",
    ),
    **dict.fromkeys(("resolve_run_dir", "torchrun_processes"), "zflight.run.run_dir"),
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def train(overrides: list[str] | None = None) -> dict[str, Any]:
    """Train from ``key=value`` overrides; return the run's directory, checkpoints and final accuracy."""
    overrides, show = pop_flag(list(overrides or []), "print_config")
    cfg = load_config(overrides)
    if show:
        print(to_yaml(cfg), end="")
        return {"config": cfg}
    from zflight.run.run_dir import claim_run_dir, ensure_writable, resolve_run_dir
    from zflight.run.signatures import check_callback_arguments
    from zflight.run.wandb_check import check_wandb

    check_callback_arguments(cfg)  # typos and wrong types, from the source: no torch yet

    run_dir = resolve_run_dir(cfg)  # a resume= outside any run stops here, nothing created
    check_wandb(cfg)  # online without a key or a network: one line now, not a traceback later

    import lightning.pytorch as pl

    from zflight.run import build
    from zflight.run.checkpoints import check_matches, read_checkpoint
    from zflight.run.extend import check_resume
    from zflight.run.lock import RunLock, launching_process
    from zflight.run.memory import keep_freed_memory

    build.check_devices(cfg)
    callbacks = build.build_callbacks(cfg)
    if cfg.trainer.keep_freed_memory:
        keep_freed_memory()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(
        cfg, build.build_model(cfg, datamodule.num_classes), datamodule.num_classes
    )
    carried: dict[str, Any] = {}
    if cfg.resume:
        resumed = read_checkpoint(cfg.resume, "resume")
        check_matches(resumed, cfg.resume, "resume", cfg, module)
        check_resume(resumed, cfg, run_dir)  # epochs left to train, space on the disk
        carried = dict(resumed.get("callbacks") or {})  # histories of callbacks not in this run
        del resumed
    lock = None
    if launching_process():
        run_dir = claim_run_dir(run_dir)
        ensure_writable(run_dir)  # one line for a directory that cannot be written
        lock = RunLock(run_dir).acquire()
        if lock.took_over:
            print(lock.took_over, flush=True)
    try:
        return _fit(cfg, run_dir, callbacks, datamodule, module, carried)
    finally:
        if lock is not None:
            lock.release()


def _fit(
    cfg: Any, run_dir: Path, callbacks: list, datamodule: Any, module: Any, carried: dict
) -> dict[str, Any]:
    """Open the logger, write the run's config and train; a signal ends it saved (``Preempted``)."""
    from omegaconf import OmegaConf

    from zflight.callbacks.disk import DISK
    from zflight.callbacks.ledger import CostLedger
    from zflight.callbacks.run_record import RunRecord
    from zflight.run import build
    from zflight.run.checkpoints import DiskFull, LastCheckpoint
    from zflight.run.console import quiet_console, write_line
    from zflight.run.divergence import StopOnDivergence
    from zflight.run.preemption import Preempted, Preemption
    from zflight.run.run_dir import ensure_writable

    ensure_writable(run_dir)
    DISK.reset()
    last = LastCheckpoint(
        run_dir / "checkpoints" / "last.ckpt", OmegaConf.to_container(cfg, resolve=True), carried
    )
    preemption = Preemption(tuple(cfg.trainer.stop_signals))
    logger = build.build_logger(cfg, run_dir)
    ledger = CostLedger(write_line, analysis_budget(cfg))  # the analyses' cost, each epoch
    watch = [RunRecord(), ledger, *quiet_console(logger, cfg.trainer.progress)]  # gallery, console
    first = [StopOnDivergence(last, cfg.resume), last, preemption]  # last.ckpt before analyses
    trainer = build.build_trainer(cfg, run_dir, [*first, *callbacks, *watch], logger)
    if trainer.is_global_zero:
        if not DISK.write_text(run_dir / "config.yaml", to_yaml(cfg), "config"):
            raise ConfigError(f"run_dir={run_dir}: the disk is full; free some space first")
        if logger:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            if hasattr(logger, "experiment") and hasattr(logger.experiment, "id"):
                (run_dir / "wandb-id.txt").write_text(str(logger.experiment.id))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.resume)
    except BaseException as exc:
        if trainer.is_global_zero:
            _finish(logger)
        if isinstance(exc, DiskFull) and DISK.summary():
            raise DiskFull(f"{exc}\n{DISK.summary()}", exc.quiet) from None
        if preemption.received is not None and not isinstance(exc, RunFailure):
            raise Preempted(
                last.stopped_line(preemption.name(), preemption.epoch),
                preemption.received,
                quiet=not trainer.is_global_zero,
            ) from None
        raise
    finally:
        preemption.restore()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    result = {
        "run_dir": run_dir,
        "val_acc1": metrics.get("val/acc1", float("nan")),
        "val_acc5": metrics.get("val/acc5", float("nan")),
        "best_ckpt": trainer.checkpoint_callbacks[0].best_model_path,
        "last_ckpt": str(last.path),
        "wandb_dir": _wandb_dir(logger),
        "epochs": trainer.current_epoch,
    }
    if trainer.is_global_zero:
        _finish(logger)
        _print_summary(result, DISK.summary())
    return result


def _finish(logger: Any) -> None:
    """Flush and close a W&B run so everything is on disk when training returns."""
    from lightning.pytorch.loggers import WandbLogger

    from zflight.callbacks.sinks import WRITER

    if isinstance(logger, WandbLogger):
        try:
            if hasattr(logger, "commit_rows"):  # the last epoch's row, also when a run stops early
                WRITER.flush(raise_errors=False)
                logger.commit_rows()
            logger.experiment.finish()
            import wandb

            wandb.teardown()  # finish() can return before the run's records are on disk
        except Exception as exc:  # a logging failure never fails the run
            print(f"warning: could not close the W&B run cleanly: {exc!r}", file=sys.stderr)


def _wandb_dir(logger: Any) -> str | None:
    try:
        from lightning.pytorch.loggers import WandbLogger

        return str(Path(logger.experiment.dir).parent) if isinstance(logger, WandbLogger) else None
    except Exception:
        return None


def _shown(path: Any) -> str:
    """A path as the user typed it: relative to the working directory when inside it."""
    if not path:
        return "-"
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def _print_summary(r: dict[str, Any], unwritten: str | None = None) -> None:
    lines = [
        f"final validation accuracy: top-1 {r['val_acc1']:.4f}, top-5 {r['val_acc5']:.4f}",
        f"run directory:  {r['run_dir']}",
        f"checkpoints:    best {_shown(r['best_ckpt'])}, last {_shown(r['last_ckpt'])}",
        f"pictures:       {Path(r['run_dir']) / 'viz' / 'index.html'}",
    ]
    if r["wandb_dir"]:
        lines.append(
            f"W&B run:        {r['wandb_dir']}  (upload later with `wandb sync {r['wandb_dir']}`)"
        )
    if unwritten:
        lines.append(unwritten)
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    code = run_command(train, argv, usage(TRAIN_USAGE))
    if code >= 128:  # stopped by a signal: saved, loggers closed, lock released, line printed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(
            code
        )  # skip the interpreter's teardown (seconds with torch loaded): grace is short
    return code


if __name__ == "__main__":
    sys.exit(main())
