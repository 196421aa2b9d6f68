"""The LightningModule: cross-entropy, the optimizer and schedule, top-1/top-5 accuracy."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from zflight.schedules import refit_schedule

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("none", "step", "plateau", "cosine", "onecycle")


class ClassifierModule(pl.LightningModule):
    """Trains any image classifier; ``model`` is the plain network (what the callbacks look inside).

    Args:
        model: the network.
        num_classes: number of classes (for the metrics).
        optimizer: ``"sgd"`` (momentum, the paper's) or ``"adamw"``.
        lr, momentum, weight_decay: optimizer settings (paper: 1e-2, 0.9, 5e-4).
        schedule: ``"none"``, ``"step"`` (x ``gamma`` every ``step_size`` epochs), ``"plateau"``
            (x ``gamma`` when validation accuracy stops improving, as the paper annealed by hand),
            ``"cosine"`` or ``"onecycle"`` (per step, warm-up ``pct_start`` of the run but at least
            ``warmup_steps``; see ``one_cycle``).
        channels_last: keep weights and inputs in NHWC (faster convolutions on GPUs).
        compile: wrap the network in ``torch.compile`` for training.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: str = "sgd",
        lr: float = 1e-2,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        schedule: str = "step",
        step_size: int = 30,
        gamma: float = 0.1,
        patience: int = 3,
        pct_start: float = 0.25,
        channels_last: bool = False,
        compile: bool = False,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optim.name must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}"
            )
        if schedule not in SCHEDULES:
            raise ValueError(
                f"optim.schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}"
            )
        self.save_hyperparameters(ignore=["model"], logger=False)  # the run logs its whole config
        self.model = model
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile:
            self.model.compile()  # in place: checkpoints keep the plain parameter names
        self._resumed: dict[str, Any] | None = None
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1)
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        if self.trainer._logger_connector.should_update_logs:  # only on steps that reach a logger
            acc = (logits.detach().argmax(1) == labels).float().mean()
            self.log_dict({"train/loss": loss.detach(), "train/acc": acc}, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch[0], batch[1]
        if images.dim() == 5:  # ten-crop evaluation: average the crops' probabilities
            b, n = images.shape[:2]
            probs = F.softmax(self(images.flatten(0, 1)).float(), dim=1).view(b, n, -1).mean(1)
            logits = probs.log()
        else:
            logits = self(images)
        self.log("val/loss", F.cross_entropy(logits.float(), labels), sync_dist=True, prog_bar=True)
        self.val_acc1(logits, labels)
        self.val_acc5(logits, labels)
        self.log("val/acc1", self.val_acc1, prog_bar=True)
        self.log("val/acc5", self.val_acc5)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resumed = checkpoint  # its schedule is refitted to this run's length below

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum)
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr)
        if hp.schedule == "none":
            return opt
        if hp.schedule == "step":
            sched = {"scheduler": torch.optim.lr_scheduler.StepLR(opt, hp.step_size, hp.gamma)}
        elif hp.schedule == "plateau":
            sched = {
                "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(
                    opt, "max", hp.gamma, hp.patience
                ),
                "monitor": "val/acc1",
            }
        elif hp.schedule == "cosine":
            sched = {
                "scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(
                    opt, self.trainer.max_epochs
                )
            }
        else:
            total = max(int(self.trainer.estimated_stepping_batches), 4)
            scheduler = one_cycle(opt, hp.lr, total, hp.pct_start, hp.get("warmup_steps", 0))
            sched = {"scheduler": scheduler, "interval": "step"}
        if self._resumed is not None:  # Lightning loads the checkpoint's schedule after this
            refit_schedule(self._resumed, sched["scheduler"], hp.schedule)
            self._resumed = None
        return {"optimizer": opt, "lr_scheduler": sched}


def one_cycle(
    opt: torch.optim.Optimizer, lr: float, total: int, pct_start: float, warmup_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """PyTorch's one-cycle schedule whose warm-up lasts ``pct_start`` of the run, but never fewer
    than ``warmup_steps`` steps.

    A network that starts on the plateau of uniform output needs some steps at a low rate to
    leave it; reached too early, the peak rate kills its ReLUs instead (the default model squeezed
    into one epoch of 250 steps: 72% of conv2's and 85% of fc7's units dead by step 80, loss stuck
    at ln 8). A run whose ``pct_start`` share is shorter than ``warmup_steps`` warms up at the
    pace of a ``warmup_steps`` warm-up and turns at its middle, at the rate reached there, then
    anneals as one-cycle does; longer runs get ``OneCycleLR`` unchanged.
    """
    pct = min(max(pct_start, 2.0 / total), 0.5)  # both phases at least two steps long
    if pct * total >= warmup_steps:
        return torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=total, pct_start=pct)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, partial(short_one_cycle_factor, total=total, warmup_steps=warmup_steps)
    )


def short_one_cycle_factor(
    step: int, total: int, warmup_steps: int, div_factor: float = 25.0, final_div: float = 1e4
) -> float:
    """The learning-rate factor at ``step`` of a one-cycle run too short for its warm-up: cosine
    from ``1/div_factor`` towards 1 over ``warmup_steps`` (as ``OneCycleLR`` paces it), turning at
    ``min(warmup_steps, total // 2)``, then cosine down to ``1/(div_factor*final_div)`` at the
    last step."""
    start, end = 1.0 / div_factor, 1.0 / (div_factor * final_div)
    turn = min(warmup_steps - 1, total // 2)

    def warm(t: float) -> float:
        return start + (1.0 - start) * (1.0 - math.cos(math.pi * t / (warmup_steps - 1))) / 2

    if step <= turn:
        return warm(step)
    top = warm(turn)
    done = min(1.0, (step - turn) / max(total - 1 - turn, 1))
    return end + (top - end) * (1.0 + math.cos(math.pi * done)) / 2
