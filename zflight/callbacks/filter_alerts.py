"""Filter-health alerts: one warning per crossing, after warm-up, saying what to try."""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch.utilities import rank_zero_warn

# metric, or <layer>/<metric> for one layer (it wins over the metric's) -> value above which the
# layer is unhealthy. The first layer is the paper's concern (Fig. 6): a quarter of its filters
# dead or aliased, or half still at their start. Deeper layers of a network that learns well can
# keep many units near their start and lose some to ReLU (the default run on 4000 images had 31%
# of conv2's units never active by epoch 1), so there only half the layer dead warns. Gridding
# is reported, not alerted: the deconvnet's unpooling makes projections periodic in any pooled net.
DEFAULT_ALERTS: dict[str, float] = {
    "dead": 0.5,
    "conv1/dead": 0.25,
    "conv1/aliased": 0.25,
    "conv1/untrained": 0.5,
}
ADVICE = {
    "dead": "lower the learning rate, clip filter RMS (callbacks.renorm) or start conv1 smaller "
    "(model.conv1_std)",
    "aliased": "use a smaller first-layer stride and kernel (model.name=zfnet) or clip filter RMS "
    "(callbacks.renorm)",
    "untrained": "train longer or raise the learning rate; these filters have not left their start",
    "gridding_rel": "layer-2 projections grid more than at the start: a smaller conv1 stride "
    "(model.name=zfnet) removes the grid",
}


def raise_alerts(
    prefix: str,
    scalars: Mapping[str, float],
    thresholds: Mapping[str, float],
    above: dict[str, bool],
    epoch: int,
    rank: int,
) -> list[str]:
    """Warn (rank zero, and a W&B alert from rank 0) for each ``<layer>/<metric>`` scalar that
    rises above its threshold (``thresholds[key]``, else ``thresholds[metric]``); ``above``
    remembers which are above, so a value that stays above warns once. Returns the warnings."""
    texts = []
    for key, value in scalars.items():
        metric = key.rsplit("/", 1)[-1]
        limit = thresholds.get(key, thresholds.get(metric))
        if limit is None:
            continue
        is_above = value > limit
        if is_above and not above.get(key, False):
            text = (
                f"{prefix}/{key} = {value:.3f} exceeds {limit} at epoch {epoch}: {ADVICE[metric]}"
            )
            rank_zero_warn(text)
            if rank == 0:
                wandb_alert(f"filter health: {key}", text)
            texts.append(text)
        above[key] = is_above
    return texts


def wandb_alert(title: str, text: str) -> None:
    """A W&B alert when a run is online; never raises (offline, disabled or no wandb: nothing)."""
    try:
        import wandb

        run = wandb.run
        if run is not None and not run.offline and not run.disabled:
            run.alert(title=title, text=text)
    except Exception as exc:
        rank_zero_warn(f"could not send a W&B alert: {exc!r}")
