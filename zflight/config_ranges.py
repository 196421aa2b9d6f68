"""Ranges and relations of the config's values, checked with the types before anything starts
(``zflight.config.validate`` calls ``check_ranges``): a value out of its range, or one that cannot
work with another (a batch larger than the data, an image smaller than the model takes), is one
ConfigError naming the key and what would be valid. No torch: the model's limits are here as
numbers that tests keep equal to the models'."""

from __future__ import annotations

import signal
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zflight.config import ConfigError

# the smallest square input each model takes (its trunk leaves at least one pixel; a test checks)
MIN_IMAGE_SIZE = {"alexnet_style": 63, "zfnet": 53}
# channels of ZFNet's narrowest layer (conv1): model.width below 1/96 would round it to zero
NARROWEST_LAYER = 96
SHAPES_CLASSES = 8  # zflight.data.shapes.CLASSES (a test keeps them equal)


# key -> (test, what the value must be): one line each when a value is out of range
RANGES: dict[str, tuple[Any, str]] = {
    "trainer.max_epochs": (lambda v: v >= 1, ">= 1"),
    "trainer.num_nodes": (lambda v: v >= 1, ">= 1"),
    "trainer.log_every_n_steps": (lambda v: v >= 1, ">= 1"),
    "trainer.limit_train_batches": (
        lambda v: 0 < v <= 1 or float(v).is_integer(),
        "a share in (0, 1] or a whole number of batches",
    ),
    "trainer.limit_val_batches": (
        lambda v: 0 <= v <= 1 or float(v).is_integer(),
        "a share in [0, 1] or a whole number of batches",
    ),
    "data.batch_size": (lambda v: v >= 1, ">= 1"),
    "data.train_size": (lambda v: v >= 1, ">= 1"),
    "data.val_size": (lambda v: v >= 1, ">= 1"),
    "data.num_workers": (lambda v: v >= 0, ">= 0 (0 loads in the main process)"),
    "data.image_size": (lambda v: v >= 1, ">= 1"),
    "model.width": (
        lambda v: 1 / NARROWEST_LAYER <= v <= 16,
        f"between 1/{NARROWEST_LAYER} (one conv1 channel) and 16",
    ),
    "model.head_pool": (lambda v: v >= 1, ">= 1"),
    "model.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.conv1_std": (lambda v: v is None or v > 0, "> 0, or null for the init's rule"),
    "optim.lr": (lambda v: 0 < v < float("inf"), "> 0 (and finite)"),
    "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.weight_decay": (lambda v: v >= 0, ">= 0"),
    "optim.step_size": (lambda v: v >= 1, ">= 1 (epochs)"),
    "optim.gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "optim.patience": (lambda v: v >= 0, ">= 0 (epochs)"),
    "optim.pct_start": (lambda v: 0 < v < 1, "in (0, 1)"),
}


def check_ranges(cfg: DictConfig) -> None:
    """Every numeric key in its range, and the relations between keys that would otherwise fail
    later (or train nothing): one ConfigError naming the key and what would be valid."""
    for key, (ok, want) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}={value} is out of range: it must be {want}")
    d, m, t = cfg.data, cfg.model, cfg.trainer
    smallest = MIN_IMAGE_SIZE.get(m.name, 1)
    if d.image_size < smallest:
        raise ConfigError(
            f"data.image_size={d.image_size} is smaller than model.name={m.name} takes "
            f"({smallest} px: its trunk would leave no pixel); use data.image_size>={smallest}"
        )
    if d.name == "imagefolder" and d.resize < d.image_size:
        raise ConfigError(
            f"data.resize={d.resize} is smaller than data.image_size={d.image_size}; the crop is "
            f"taken from the resized image: use data.resize>={d.image_size}"
        )
    if d.name == "shapes":
        if not 2 <= d.num_classes <= SHAPES_CLASSES:
            raise ConfigError(
                f"data.num_classes={d.num_classes} is out of range: the shapes data set has "
                f"2 to {SHAPES_CLASSES} classes"
            )
        processes = processes_asked(t.devices) * t.num_nodes
        per_process = d.train_size // processes
        if d.batch_size > per_process:
            each = f" per process ({processes} processes)" if processes > 1 else ""
            raise ConfigError(
                f"data.batch_size={d.batch_size} is larger than the training set{each} "
                f"(data.train_size={d.train_size}): not one full batch, nothing would train; "
                f"use data.batch_size<={max(per_process, 1)} or a larger data.train_size"
            )
    devices = t.devices
    if not (
        devices == "auto"
        or (isinstance(devices, int) and (devices >= 1 or devices == -1))
        or (OmegaConf.is_list(devices) and all(isinstance(i, int) and i >= 0 for i in devices))
    ):
        raise ConfigError(
            f"trainer.devices={devices} is not valid: auto, a count >= 1, -1 (every GPU) or a "
            f"list of GPU indices"
        )
    for name in t.stop_signals:
        text = str(name).upper()
        if not hasattr(signal, text if text.startswith("SIG") else f"SIG{text}"):
            raise ConfigError(
                f"trainer.stop_signals: {name!r} is not a signal; use names such as SIGTERM, SIGUSR1"
            )


def processes_asked(devices: Any) -> int:
    """Processes per node that ``trainer.devices`` asks for (1 where only torch could tell)."""
    if isinstance(devices, int) and devices >= 1:
        return devices
    if OmegaConf.is_list(devices):
        return max(len(devices), 1)
    return 1
