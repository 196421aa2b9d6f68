"""``python -m zflight.visualize ckpt=PATH [callbacks=SET] [key=value ...]``: run visual callbacks on a
saved checkpoint, without training, writing the same PNGs and gallery as during training.

The run's saved ``config.yaml`` (beside ``checkpoints/``) is the starting point, so the model and
data are rebuilt as they were trained; ``out=DIR`` chooses where ``viz/`` goes (default: the run).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import OmegaConf

from zflight.config import ConfigError, load_config, run_command
from zflight.module import ClassifierModule
from zflight.train import build_callbacks, build_datamodule, build_model


def visualize(argv: list[str]) -> Path:
    """Run the configured callbacks once on the checkpoint; return the gallery's path."""
    options = dict(a.split("=", 1) for a in argv if a.split("=", 1)[0] in ("ckpt", "out"))
    rest = [a for a in argv if a.split("=", 1)[0] not in ("ckpt", "out")]
    if "ckpt" not in options:
        raise ConfigError("visualize needs ckpt=PATH (a checkpoint written by zflight.train)")
    ckpt = Path(options["ckpt"])
    if not ckpt.is_file():
        raise ConfigError(f"ckpt={str(ckpt)!r} is not a file")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    saved = run_dir / "config.yaml"
    cfg = load_config(rest, base=OmegaConf.load(saved) if saved.exists() else None)
    out = Path(options.get("out", run_dir))
    state: dict[str, Any] = torch.load(ckpt, map_location="cpu", weights_only=False)
    datamodule = build_datamodule(cfg)
    module = ClassifierModule(build_model(cfg, datamodule.num_classes), datamodule.num_classes)
    module.load_state_dict(state["state_dict"])
    callbacks = build_callbacks(cfg)
    if not callbacks:
        raise ConfigError(
            "no callbacks configured: pass callbacks=default or callbacks.<name>._target_=..."
        )
    trainer = pl.Trainer(
        default_root_dir=str(out),
        logger=False,
        callbacks=callbacks,
        accelerator=cfg.trainer.accelerator,
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=cfg.trainer.progress,
        limit_val_batches=cfg.trainer.limit_val_batches,
    )
    trainer.fit_loop.epoch_progress.current.completed = int(
        state.get("epoch", 0)
    )  # name PNGs by the ckpt's epoch
    trainer.validate(module, datamodule=datamodule, verbose=False)
    gallery = out / "viz" / "index.html"
    print(f"pictures: {gallery}", flush=True)
    return gallery


def main(argv: list[str] | None = None) -> int:
    return run_command(visualize, argv)


if __name__ == "__main__":
    sys.exit(main())
