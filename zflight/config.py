"""Configuration: ``configs/train.yaml`` + ``experiment=NAME`` + group choices (``logger=csv``) +
``key=value`` overrides, validated against a typed schema before anything starts, and ``_target_``
construction of callbacks and other objects (``zflight.run.targets``). Needs no torch: a bad config
is reported before the heavy packages load."""

from __future__ import annotations

import difflib
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
    for key in ("trainer.max_epochs", "data.batch_size", "trainer.num_nodes"):
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {OmegaConf.select(cfg, key)}")
    if cfg.data.name == "imagefolder" and not cfg.data.root:
        raise ConfigError("data.name=imagefolder needs data.root=/path/to/folder (ImageNet layout)")
    for name, spec in cfg.callbacks.items():
        if spec is None:
            continue
        if not isinstance(spec, DictConfig) or "_target_" not in spec:
            raise ConfigError(
                f"callbacks.{name} must be a mapping with a _target_ (a class path), "
                f"or null to switch it off"
            )


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
