"""Objects a run is made of, built from a checked config: data module, network, LightningModule,
logger, callbacks and trainer. Imports torch and Lightning; entry points import it only after the
config is checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from zflight.config import BUDGET_KEY, ConfigError
from zflight.data import ImageFolderDataModule, ShapesDataModule
from zflight.models import create_model
from zflight.module import ClassifierModule
from zflight.run.checkpoints import AtomicCheckpointIO
from zflight.run.run_dir import torchrun_processes
from zflight.run.strategy import build_strategy
from zflight.run.targets import instantiate
from zflight.run.wandb_check import wandb_mode
from zflight.run.wandb_rows import LearningRate


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
            texture_labels=d.texture_labels,
        )
    try:
        dm = ImageFolderDataModule(
            d.root,
            d.image_size,
            d.resize,
            d.batch_size,
            d.num_workers,
            d.ten_crop,
            d.decode,
            d.cache_dir,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    found = len(dm.index["train"].samples)
    if d.batch_size > found:  # the loader drops the last, incomplete batch: nothing would train
        raise ConfigError(
            f"data.batch_size={d.batch_size} is larger than the {found} training images in "
            f"{d.root}/train: not one full batch; use data.batch_size<={max(found, 1)}"
        )
    return dm


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


def build_module(cfg: DictConfig, model: torch.nn.Module, num_classes: int) -> ClassifierModule:
    # NHWC: faster convolutions and pools with cuDNN and with oneDNN on CPUs (ZFNet, 64 px: 15%)
    channels_last = cfg.trainer.channels_last != "false"
    o = cfg.optim
    return ClassifierModule(
        model,
        num_classes,
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
        warmup_steps=o.warmup_steps,
    )


def build_logger(cfg: DictConfig, run_dir: Path) -> Any:
    lg = cfg.logger
    if lg.name == "none":
        return False
    if lg.name == "csv":
        from zflight.run.loggers import AppendingCSVLogger

        return AppendingCSVLogger(str(run_dir), name="csv", version="")
    if lg.name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(str(run_dir), name="tensorboard", version="")
    from zflight.run.wandb_rows import EpochRowWandbLogger, point_wandb_into

    mode = wandb_mode(lg.mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    point_wandb_into(run_dir)
    id_file = run_dir / "wandb-id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    return EpochRowWandbLogger(
        project=lg.project,
        entity=lg.entity,
        name=run_dir.name,
        save_dir=str(run_dir),
        mode=mode,
        id=run_id,
        resume="allow" if run_id else None,
    )


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """Every configured callback; a wrong argument is a ConfigError naming it and the valid ones."""
    return [
        instantiate(spec, f"callbacks.{name}")
        for name, spec in cfg.callbacks.items()
        if spec is not None and name != BUDGET_KEY
    ]


def check_devices(cfg: DictConfig) -> None:
    """GPUs asked for must be there: one line now rather than Lightning's traceback later."""
    t = cfg.trainer
    if str(t.accelerator) not in ("gpu", "cuda"):
        return
    have = torch.cuda.device_count()
    if OmegaConf.is_list(t.devices) or isinstance(t.devices, (list, tuple)):
        want = len(t.devices)
    else:
        want = t.devices if isinstance(t.devices, int) and t.devices > 0 else 1
    if have < want:
        raise ConfigError(
            f"trainer.accelerator={t.accelerator} trainer.devices={t.devices}: this machine has "
            f"{have} GPU{'' if have == 1 else 's'} that PyTorch can use; use "
            f"trainer.accelerator=cpu{' or fewer devices' if have else ''}"
        )


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
    best = ModelCheckpoint(
        run_dir / "checkpoints",
        filename="best",
        monitor="val/acc1",
        mode="max",
        save_top_k=1,
        enable_version_counter=False,  # a resumed run replaces best.ckpt, never adds best-v1.ckpt
    )
    extra = [LearningRate()] if logger else []
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # zflight.run.preemption stops and saves; the sbatch requeues
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return pl.Trainer(
        default_root_dir=str(run_dir),
        accelerator=t.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        max_epochs=t.max_epochs,
        logger=logger,
        callbacks=[best, *extra, *callbacks],
        plugins=plugins,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        deterministic=t.deterministic,
        enable_progress_bar=t.progress,
        num_sanity_val_steps=0,
    )
