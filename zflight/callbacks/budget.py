"""Size the analyses' schedule to a budget: a share of the training epoch's forward passes.

At the start of training each visual callback estimates what one run costs on one rank
(``VisualizationCallback.estimate_forwards``) at the probe images' size, split over the ranks and
with or without object masks; divided by its ``every_n_epochs`` that is its cost per epoch. When the
sum is over ``budget`` times the training epoch (forward + backward passes on one rank), every
callback's interval is stretched by the same factor, rounded up, and one line says so. Nothing is
cut short inside an analysis: the pictures stay whole, they come less often.
"""

from __future__ import annotations

import math
from typing import Any

from zflight.analysis.cost import training_forwards
from zflight.callbacks.scoring import validation_dataset


def stretched(intervals: dict[str, int], costs: dict[str, float], allowed: float) -> dict[str, int]:
    """New ``every_n_epochs`` per callback so that sum(cost / interval) <= ``allowed``.

    Every interval is multiplied by the factor the total is over, rounded up per callback, so the
    callbacks keep their proportions; within the budget nothing changes.
    """
    total = sum(costs[n] / intervals[n] for n in intervals)
    if total <= allowed or total == 0:
        return dict(intervals)
    factor = total / allowed if allowed > 0 else math.inf
    return {
        n: intervals[n] if costs[n] == 0 else max(intervals[n], math.ceil(intervals[n] * factor))
        for n in intervals
    }


def fit_budget(
    trainer: Any, pl_module: Any, budget: float, backward_factor: float = 2.0
) -> str | None:
    """Stretch the visual callbacks' schedules to ``budget``; the line to print, or None."""
    from zflight.callbacks.base import VisualizationCallback

    callbacks = [cb for cb in trainer.callbacks if isinstance(cb, VisualizationCallback)]
    found = validation_dataset(trainer)
    batches = getattr(trainer, "num_training_batches", 0)
    batch_size = getattr(getattr(trainer, "datamodule", None), "batch_size", 0)
    if not callbacks or found is None or not math.isfinite(batches) or not batch_size:
        return None
    sample = found[0][0]
    shape, masks = tuple(sample[0].shape), len(sample) > 2
    epoch = training_forwards(int(batches) * int(batch_size), backward_factor)
    world = max(1, int(trainer.world_size))
    costs = {cb.name: cb.estimate_forwards(shape, world, masks) for cb in callbacks}
    intervals = {cb.name: cb.every_n_epochs for cb in callbacks}
    new = stretched(intervals, costs, budget * epoch)
    if new == intervals:
        return None
    for cb in callbacks:
        cb.every_n_epochs = new[cb.name]
    total = sum(costs[n] / intervals[n] for n in intervals)
    changes = ", ".join(
        f"{n} {intervals[n]}->{new[n]}" for n in intervals if new[n] != intervals[n]
    )
    after = sum(costs[n] / new[n] for n in new)
    return (
        f"analyses: estimated {total:,.0f} forward passes a rank per epoch, {total / epoch:.1%} of "
        f"the training epoch ({epoch:,.0f}), over callbacks.budget={budget:g}; every_n_epochs "
        f"now {changes} ({after / epoch:.1%}; the last epoch is still analysed)"
    )
