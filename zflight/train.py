"""``python -m zflight.train key=value ...``: build everything from the config and train."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from zflight.callbacks.run_record import RunRecord
from zflight.config import ConfigError, instantiate, load_config, run_command, to_yaml
from zflight.console import quiet_console
from zflight.data import ImageFolderDataModule, ShapesDataModule
from zflight.memory import keep_freed_memory
from zflight.models import create_model
from zflight.module import ClassifierModule
from zflight.strategy import build_strategy


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    d = cfg.data
    if d.name == "shapes":
        return ShapesDataModule(
            d.train_size,
            d.val_size,
            d.image_size,
            d.num_classes,
            d.batch_size,
            d.num_workers,
            cfg.seed,
            d.cache_dir,
            fine_texture=d.fine_texture,
        )
    try:
        return ImageFolderDataModule(
            d.root, d.image_size, d.resize, d.batch_size, d.num_workers, d.ten_crop
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_model(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    m = cfg.model
    kwargs: dict[str, Any] = dict(
        num_classes=num_classes,
        width=m.width,
        head_pool=m.head_pool,
        dropout=m.dropout,
        init=m.init,
        conv1_std=m.conv1_std,
    )
    if m.lrn != "torch" or m.pool != "torch":
        from zflight.models.fast_ops import LRN_IMPLS, POOL_IMPLS

        kwargs.update(lrn=LRN_IMPLS[m.lrn], pool=POOL_IMPLS[m.pool])
    return create_model(m.name, **kwargs)


def wandb_mode(requested: str) -> str:
    """``auto`` -> online only with an API key and a reachable server; never prompts."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    netrc = Path.home() / ".netrc"
    has_key = has_key or (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
    if not has_key:
        return "offline"
    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=2).close()
        return "online"
    except OSError:
        return "offline"


def build_logger(cfg: DictConfig, run_dir: Path) -> Any:
    lg = cfg.logger
    if lg.name == "none":
        return False
    if lg.name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(run_dir), name="csv", version="")
    if lg.name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(str(run_dir), name="tensorboard", version="")
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode(lg.mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    id_file = run_dir / "wandb-id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    logger = WandbLogger(
        project=lg.project,
        entity=lg.entity,
        name=run_dir.name,
        save_dir=str(run_dir),
        mode=mode,
        id=run_id,
        resume="allow" if run_id else None,
    )
    return logger


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    built = []
    for name, spec in cfg.callbacks.items():
        if spec is not None:
            built.append(instantiate(spec, f"callbacks.{name}"))
    return built


def resolve_run_dir(cfg: DictConfig) -> Path:
    """The run's directory: given, the resumed checkpoint's run, or a new dated one shared by all ranks."""
    if cfg.run_dir:
        return Path(cfg.run_dir)
    if cfg.resume:
        ckpt = Path(cfg.resume)
        return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    if "ZFLIGHT_RUN_DIR" not in os.environ:  # set once so DDP ranks launched from here agree
        # torchrun's workers start separately: they agree on their launcher's start time
        when = (torchrun_processes() and _parent_start_time()) or time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
        os.environ["ZFLIGHT_RUN_DIR"] = str(Path(cfg.runs_root) / f"{stamp}-{cfg.name}")
    return Path(os.environ["ZFLIGHT_RUN_DIR"])


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


def build_trainer(
    cfg: DictConfig, run_dir: Path, callbacks: list[pl.Callback], logger: Any
) -> pl.Trainer:
    t = cfg.trainer
    on_gpu = t.accelerator in ("gpu", "cuda") or (
        t.accelerator == "auto" and torch.cuda.is_available()
    )
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    devices, num_nodes = t.devices, t.num_nodes
    launched = torchrun_processes()
    if launched and devices == "auto":  # one process per torchrun worker, no launching of our own
        devices, num_nodes = launched
    n_dev = devices if isinstance(devices, int) else (torch.cuda.device_count() if on_gpu else 1)
    try:
        strategy = build_strategy(n_dev, num_nodes, OmegaConf.to_container(t.ddp))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    ckpt_dir = run_dir / "checkpoints"
    checkpoints = [
        ModelCheckpoint(ckpt_dir, filename="best", monitor="val/acc1", mode="max", save_top_k=1),
        ModelCheckpoint(ckpt_dir, filename="last-{epoch}", save_last=True, save_top_k=0),
    ]
    extra = [LearningRateMonitor("step")] if logger else []
    return pl.Trainer(
        default_root_dir=str(run_dir),
        accelerator=t.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        max_epochs=t.max_epochs,
        logger=logger,
        callbacks=[*checkpoints, *extra, *callbacks],
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        deterministic=t.deterministic,
        enable_progress_bar=t.progress,
        num_sanity_val_steps=0,
    )


def train(overrides: list[str] | None = None) -> dict[str, Any]:
    """Train from ``key=value`` overrides; return the run's directory, checkpoints and final accuracy."""
    cfg = load_config(overrides)
    if cfg.trainer.keep_freed_memory:
        keep_freed_memory()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = resolve_run_dir(cfg)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule.num_classes)
    # NHWC: faster convolutions and pools with cuDNN and with oneDNN on CPUs (ZFNet, 64 px: 15%)
    channels_last = cfg.trainer.channels_last != "false"
    o = cfg.optim
    module = ClassifierModule(
        model,
        datamodule.num_classes,
        o.name,
        o.lr,
        o.momentum,
        o.weight_decay,
        o.schedule,
        o.step_size,
        o.gamma,
        o.patience,
        o.pct_start,
        channels_last,
        cfg.trainer.compile,
    )
    logger = build_logger(cfg, run_dir)
    watch = [RunRecord(), *quiet_console(logger)]  # gallery numbers; progress, analyses, summary
    trainer = build_trainer(cfg, run_dir, [*build_callbacks(cfg), *watch], logger)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        if logger:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            if hasattr(logger, "experiment") and hasattr(logger.experiment, "id"):
                (run_dir / "wandb-id.txt").write_text(str(logger.experiment.id))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.resume)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    result = {
        "run_dir": run_dir,
        "val_acc1": metrics.get("val/acc1", float("nan")),
        "val_acc5": metrics.get("val/acc5", float("nan")),
        "best_ckpt": trainer.checkpoint_callbacks[0].best_model_path,
        "last_ckpt": str(run_dir / "checkpoints" / "last.ckpt"),
        "wandb_dir": _wandb_dir(logger),
        "epochs": trainer.current_epoch,
    }
    if trainer.is_global_zero:
        _finish(logger)
        _print_summary(result)
    return result


def _finish(logger: Any) -> None:
    """Flush and close a W&B run so everything is on disk when training returns."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        try:
            logger.experiment.finish()
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


def _print_summary(r: dict[str, Any]) -> None:
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
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    return run_command(train, argv)


if __name__ == "__main__":
    sys.exit(main())
