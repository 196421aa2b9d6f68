"""FilterRenorm: the paper's rule (section 3) that every conv filter whose RMS exceeds a fixed
radius (0.1) is scaled back to it after each update, "crucial, especially in the first layer"."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override


@torch.no_grad()
def renormalize_filters(convs: Iterable[nn.Conv2d], radius: float = 0.1) -> int:
    """Scale every filter whose RMS exceeds ``radius`` back onto it; returns how many were scaled.

    The RMS and the scale factor are computed in fp32 whatever the weight's dtype (bf16 weights then
    meet the radius within one bf16 rounding). Deterministic, so DDP ranks holding identical weights
    stay identical without communication.
    """
    scaled = 0
    for conv in convs:
        w = conv.weight
        rms = w.detach().float().flatten(1).pow(2).mean(1).sqrt()
        over = rms > radius
        if bool(over.any()):
            factor = torch.where(over, radius / rms.clamp_min(1e-30), torch.ones_like(rms))
            w.copy_((w.float() * factor.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype))
            scaled += int(over.sum())
    return scaled


class FilterRenorm(pl.Callback):
    """Clip each conv filter's RMS to ``radius`` after every optimizer step (and once at the start).

    It runs in ``on_train_batch_end``, which Lightning calls after ``optimizer.step()`` of that
    batch (automatic optimization) and before the next forward, so every forward pass sees clipped
    filters, the last step of training included. ``on_before_zero_grad`` would not do: Lightning
    zeroes gradients inside the next step's closure, after that step's forward, so the forward
    would see unclipped weights and the final update would never be clipped. With gradient
    accumulation it also runs on batches without a step, where it changes nothing.

    Args:
        radius: the largest RMS a filter may keep (the paper: 0.1).
        layers: names of the conv layers to clip, matched against the last part or the whole of
            the module's dotted name (``conv1`` or ``model.features.conv1``); None: every Conv2d.

    Raises:
        ValueError: for a non-positive radius, or when a named layer is not a Conv2d of the module.

    Example:
        >>> FilterRenorm(radius=0.1, layers=["conv1", "conv2"])
    """

    def __init__(self, radius: float = 0.1, layers: Sequence[str] | None = None) -> None:
        if radius <= 0:
            raise ValueError(f"radius must be positive, got {radius}")
        self.radius = radius
        self.layers = None if layers is None else list(layers)
        self.clipped = 0

    def convs(self, module: nn.Module) -> list[nn.Conv2d]:
        """The Conv2d modules this callback clips."""
        found = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
        if self.layers is None:
            return [m for _, m in found]
        chosen = []
        for layer in self.layers:
            hits = [m for name, m in found if name == layer or name.rsplit(".", 1)[-1] == layer]
            if not hits:
                valid = ", ".join(name for name, _ in found)
                raise ValueError(f"FilterRenorm: no Conv2d named {layer!r}; valid: {valid}")
            chosen.extend(m for m in hits if all(m is not c for c in chosen))
        return chosen

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clipped += renormalize_filters(self.convs(pl_module), self.radius)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.clipped += renormalize_filters(self.convs(pl_module), self.radius)
