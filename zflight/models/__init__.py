"""Models by name: ``create_model("zfnet", num_classes=8, width=0.25)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from zflight.models.zfnet import ZFNet, alexnet_style, zfnet

MODELS: dict[str, Callable[..., nn.Module]] = {"zfnet": zfnet, "alexnet_style": alexnet_style}


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown names list the valid ones."""
    if name not in MODELS:
        raise KeyError(f"model.name={name!r} is not a model; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "ZFNet", "alexnet_style", "create_model", "zfnet"]
