"""Extending a run: a resumed run with a new ``trainer.max_epochs`` rebuilds its length-dependent
learning-rate schedule (one-cycle, cosine) for the new length and carries on at the step it
reached, as if the run had been planned for the new length from the start.

The curve therefore moves at the resume point to where the longer (or shorter) plan would be at
that step (for a longer run, a little higher) and follows that plan to its end: the warm-up and
decay of one-cycle, and the decay of cosine, span the new length. Schedules that do not depend on
the length (none, step, plateau) continue unchanged. Pure functions of state dictionaries.
"""

from __future__ import annotations

import math
from typing import Any


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def onecycle_lr(phases: list[dict[str, Any]], group: dict[str, Any], step: int) -> float:
    """Learning rate of ``torch.optim.lr_scheduler.OneCycleLR`` (cosine annealing) at ``step``."""
    start = 0.0
    for i, phase in enumerate(phases):
        end = phase["end_step"]
        if step <= end or i == len(phases) - 1:
            pct = (step - start) / (end - start)
            return _cos_anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)
        start = end
    raise ValueError("no phases")


def cosine_lr(base: float, eta_min: float, t_max: int, epoch: int) -> float:
    """Learning rate of ``CosineAnnealingLR`` at ``epoch`` (its closed form)."""
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2


# what one-cycle keeps in the optimizer's parameter groups (the rates it moves between)
SCHEDULE_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


def lr_at(fresh: Any, group: dict[str, Any], index: int, step: int) -> float:
    """The learning rate ``fresh`` gives parameter group ``index`` at ``step`` (closed forms of
    OneCycleLR, LambdaLR and CosineAnnealingLR)."""
    if hasattr(fresh, "_schedule_phases"):
        return onecycle_lr(fresh._schedule_phases, group, step)
    if hasattr(fresh, "lr_lambdas"):
        return fresh.base_lrs[index] * fresh.lr_lambdas[index](step)
    return cosine_lr(fresh.base_lrs[index], fresh.eta_min, fresh.T_max, step)


def refit_schedule(checkpoint: dict[str, Any], fresh: Any, kind: str) -> bool:
    """Rewrite a checkpoint's scheduler and learning rates so that loading it continues the curve of
    ``fresh`` (the scheduler built for the new length) at the step the checkpoint reached.

    The checkpoint's scheduler state becomes ``fresh``'s, at the checkpoint's step, so a run that
    changes form with its length (a short one-cycle run is a ``LambdaLR``) loads as well. Returns
    whether anything changed (False for schedules that do not depend on the length)."""
    states = checkpoint.get("lr_schedulers") or []
    optimizers = checkpoint.get("optimizer_states") or []
    if kind not in ("onecycle", "cosine") or not states or not optimizers:
        return False
    old, groups = states[0], optimizers[0]["param_groups"]
    step = int(old["last_epoch"])
    new = fresh.state_dict()
    new["last_epoch"] = step
    new["_step_count"] = int(old.get("_step_count", step + 1))
    for group, live in zip(groups, fresh.optimizer.param_groups, strict=True):
        group.update({k: live[k] for k in SCHEDULE_KEYS if k in live})
    lrs = [lr_at(fresh, group, i, step) for i, group in enumerate(groups)]
    new["_last_lr"] = list(lrs)
    for group, lr in zip(groups, lrs, strict=True):
        group["lr"] = lr
    states[0] = new
    return True
