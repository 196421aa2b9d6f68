"""Configuration: ``configs/train.yaml`` + ``experiment=NAME`` + group choices (``logger=csv``) +
``key=value`` overrides, validated against a typed schema before anything starts, and ``_target_``
construction of callbacks and other objects (``zflight.run.targets``). Needs no torch: a bad config
is reported before the heavy packages load."""

from __future__ import annotations

import difflib
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A bad configuration value, naming the key and what would be valid."""


@dataclass
class ModelConfig:
    name: str = "zfnet"
    width: float = 1.0
    head_pool: int = 6
    dropout: float = 0.5
    init: str = "kaiming"
    conv1_std: float | None = None
    lrn: str = "fast"
    pool: str = "fast"


@dataclass
class DataConfig:
    name: str = "shapes"
    root: str | None = None
    image_size: int = 64
    resize: int = 256
    train_size: int = 16000
    val_size: int = 2000
    num_classes: int = 8
    batch_size: int = 128
    num_workers: int = 0
    ten_crop: bool = False
    decode: str = "auto"
    cache_dir: str | None = "~/.cache/zflight"
    fine_texture: bool = False  # shapes: add a 0.15-0.4 cycles/px grating (data/shapes.py)
    texture_labels: bool = False  # shapes: the fine grating's orientation tells the class


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    step_size: int = 30
    gamma: float = 0.1
    patience: int = 3
    pct_start: float = 0.25
    warmup_steps: int = 400


@dataclass
class DDPConfig:
    gradient_as_bucket_view: bool = True
    static_graph: bool = False
    bucket_cap_mb: int = 25
    find_unused_parameters: bool = False
    comm_hook: str = "none"
    backend: str | None = None


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    max_epochs: int = 10
    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    log_every_n_steps: int = 20
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    deterministic: bool = False
    progress: bool = True
    keep_freed_memory: bool = True
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    ddp: DDPConfig = field(default_factory=DDPConfig)


@dataclass
class LoggerConfig:
    name: str = "wandb"
    project: str = "zflight"
    entity: str | None = None
    mode: str = "auto"


@dataclass
class TrainConfig:
    name: str = "shapes"
    seed: int = 0
    run_dir: str | None = None
    runs_root: str = "runs"
    resume: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: dict[str, Any] = field(default_factory=dict)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": ("shapes", "imagefolder"),
    "data.decode": ("auto", "device", "workers", "torchvision"),
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("none", "step", "plateau", "cosine", "onecycle"),
    "model.init": ("kaiming", "paper"),
    "model.lrn": ("torch", "fast"),
    "model.pool": ("torch", "fast"),
    "trainer.precision": ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"),
    "trainer.channels_last": ("auto", "true", "false"),
    "logger.name": ("wandb", "tensorboard", "csv", "none"),
    "logger.mode": ("auto", "online", "offline", "disabled"),
}


# callbacks.budget: the analyses' share of the training epoch (zflight.callbacks.budget), not a callback
BUDGET_KEY = "budget"


def analysis_budget(cfg: DictConfig) -> float | None:
    """``callbacks.budget`` as a float, or None when unset."""
    value = cfg.callbacks.get(BUDGET_KEY)
    return None if value is None else float(value)


# zflight.models.MODELS' names, here so that checking a config needs no torch (a test keeps them equal)
MODEL_NAMES = ("alexnet_style", "zfnet")


def groups(config_dir: Path = CONFIG_DIR) -> dict[str, list[str]]:
    """Config groups (sub-folders of ``configs/``) and the names of the files in each."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(config_dir.iterdir())
        if d.is_dir()
    }


def load_config(
    overrides: list[str] | None = None,
    config_dir: Path = CONFIG_DIR,
    base: DictConfig | None = None,
) -> DictConfig:
    """Merge schema <- train.yaml [<- base] <- experiment <- group choices <- dotted overrides, then
    validate. ``base`` is a saved run's config (post-hoc visualisation starts from it)."""
    overrides = list(overrides or [])
    found = groups(config_dir)
    choices, dotted = [], []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        (choices if key in found else dotted).append((key, value))
    choices.sort(key=lambda kv: kv[0] != "experiment")  # experiment first, then other groups
    if base is None and "callbacks" not in {g for g, _ in choices}:
        choices.insert(0, ("callbacks", "default"))  # first, so an experiment can add to or edit it
    cfg = _merge(OmegaConf.structured(TrainConfig), OmegaConf.load(config_dir / "train.yaml"))
    if base is not None:
        cfg.callbacks = {}
        cfg = _merge(cfg, base)
    for group, value in choices:
        path = config_dir / group / f"{value}.yaml"
        if not path.exists():
            raise ConfigError(
                f"{group}={value!r}: no such {group}; valid choices: {', '.join(found[group])}"
            )
        content = OmegaConf.load(path)
        if group == "callbacks":  # a callback set replaces the current one rather than adding to it
            cfg.callbacks = content
        else:
            cfg = _merge(
                cfg, content if group == "experiment" else OmegaConf.create({group: content})
            )
    try:
        dotted_cfg = OmegaConf.from_dotlist([f"{k}={v}" for k, v in dotted])
    except OmegaConfBaseException as exc:
        raise ConfigError(f"could not parse overrides: {exc}") from None
    cfg = _merge(cfg, dotted_cfg)
    for key, valid in CHOICES.items():  # `key=true` reaches a string field as "True"
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and value.lower() in valid and value not in valid:
            OmegaConf.update(cfg, key, value.lower())
    validate(cfg)
    return cfg


def _merge(cfg: DictConfig, layer: DictConfig) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, layer)
    except ConfigKeyError as exc:
        key = getattr(exc, "full_key", None) or str(exc)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(cfg, parent) if parent else cfg
        valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
        hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
        raise ConfigError(
            f"unknown config key {key!r}{hint}; valid keys under "
            f"{parent or 'the top level'}: {', '.join(valid)}"
        ) from None
    except ValidationError as exc:
        key = getattr(exc, "full_key", "?")
        node = OmegaConf.select(cfg, key, throw_on_missing=False) if key != "?" else None
        expected = type(node).__name__ if node is not None else "another type"
        raise ConfigError(
            f"wrong type for config key {key!r}: expected {expected}; {exc.msg}"
        ) from None


def validate(cfg: DictConfig) -> None:
    """Check values that a type cannot: choices, ranges, callbacks' ``_target_``."""
    choices = {**CHOICES, "model.name": MODEL_NAMES}
    for key, valid in choices.items():
        value = str(OmegaConf.select(cfg, key))
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not valid; choices: {', '.join(valid)}")
    check_ranges(cfg)
    if cfg.data.name == "imagefolder" and not cfg.data.root:
        raise ConfigError("data.name=imagefolder needs data.root=/path/to/folder (ImageNet layout)")
    budget = cfg.callbacks.get(BUDGET_KEY)
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1
    ):
        raise ConfigError(
            f"callbacks.{BUDGET_KEY}={budget!r} must be a share of the training epoch in (0, 1] "
            "(e.g. 0.02), or null for none"
        )
    for name, spec in cfg.callbacks.items():
        if spec is None or name == BUDGET_KEY:
            continue
        if not isinstance(spec, DictConfig) or "_target_" not in spec:
            raise ConfigError(
                f"callbacks.{name} must be a mapping with a _target_ (a class path), "
                f"or null to switch it off"
            )


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


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
