"""Filter health re-measured from a run's checkpoint: the ablation report's numbers.

A checkpoint holds the weights, the run's config and ``FilterHealth``'s start (each watched layer
and the trunk up to conv2 as they were when training began), so every metric can be recomputed
after training with the current definitions, on as many probe images as wanted, without
retraining: ``measure_checkpoint`` returns conv1 and conv2 health, never-active channels over the
validation set, and conv2 gridding at a common period and at each net's own, now and at the start.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from zflight.analysis.deconvnet import receptive_field, resolve_layer
from zflight.analysis.filters import FilterReport, filter_health, positive_counts
from zflight.analysis.gridding import gridding_of
from zflight.run.checkpoints import CONFIG_KEY, read_checkpoint

COMMON_PERIOD = 4  # px: the cumulative stride below conv2 in ZFNet; a harmonic of AlexNet-style's 8


def load_network(ckpt: dict[str, Any]) -> tuple[nn.Module, Any]:
    """The network of a training checkpoint, in eval mode on the CPU, and the run's config."""
    from zflight.run import build

    cfg = OmegaConf.create(ckpt[CONFIG_KEY])
    if cfg.data.name == "shapes" and "texture_labels" not in cfg.data:  # saved before the key
        cfg.data.texture_labels = False
    num_classes = int(cfg.data.num_classes) if cfg.data.name == "shapes" else None
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if num_classes is None:
        num_classes = int(state["classifier.fc8.weight"].shape[0])
    model = build.build_model(cfg, num_classes)
    model.load_state_dict(state)
    return model.float().eval(), cfg


def filter_start(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``FilterHealth``'s state in a checkpoint (its start), or {} when it did not run."""
    for key, state in ckpt.get("callbacks", {}).items():
        if key.startswith("FilterHealth"):
            return state
    return {}


def validation_images(cfg: Any, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of the run's shapes validation set (all of it, or the first ``count``)."""
    from zflight.run import build

    dm = build.build_datamodule(cfg)
    dm.setup("validate")
    ds = dm.val_dataset
    n = len(ds) if count is None else min(count, len(ds))
    items = ds.__getitems__(list(range(n)))
    return torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items])


@torch.no_grad()
def never_positive(
    trunk: nn.Sequential, layers: list[str], images: torch.Tensor
) -> dict[str, tuple[torch.Tensor, int]]:
    """Per layer: summed ``positive_counts`` of its output over ``images`` (batches of 256) and
    the entries counted per channel."""
    counts: dict[str, tuple[torch.Tensor, int]] = {}

    def count(name: str, output: torch.Tensor) -> None:
        before, entries = counts.get(name, (0, 0))
        counts[name] = (before + positive_counts(output), entries + output[:, 0].numel())

    hooks = [
        trunk._modules[name].register_forward_hook(lambda m, i, o, name=name: count(name, o))
        for name in layers
    ]
    try:
        for batch in images.split(256):
            trunk(batch)
    finally:
        for h in hooks:
            h.remove()
    return counts


def layer_report(
    model: nn.Module,
    name: str,
    start: dict[str, Any],
    positive: tuple[torch.Tensor, int] | None,
    **options: Any,
) -> FilterReport:
    """``filter_health`` of one conv layer of ``model``, against its start when the state has one."""
    features = model.features
    conv = features._modules[name]
    step = receptive_field(features, name)[1] / conv.stride[0]
    return filter_health(
        conv.weight,
        conv.stride[0],
        step=step,
        initial=start.get("initial", {}).get(name),
        positive=None if positive is None else positive[0],
        observed=None if positive is None else positive[1],
        **options,
    )


def gridding(
    model: nn.Module, start: dict[str, Any], images: torch.Tensor, period: int, channels: int = 4
) -> tuple[float, float]:
    """conv2 gridding at ``period`` now and at the start (NaN without a start)."""
    features = model.features
    trunk = features[: resolve_layer(features, "conv2") + 1]
    now, _ = gridding_of(trunk, "conv2", images, channels, period)
    if not start.get("initial_trunk"):
        return now, float("nan")
    first = copy.deepcopy(trunk)
    first.load_state_dict(start["initial_trunk"])
    then, _ = gridding_of(first, "conv2", images, channels, period)
    return now, then


def measure_checkpoint(path: str | Path, probes: int = 64, **options: Any) -> dict[str, Any]:
    """Every number of the ablation report for one run's checkpoint: ``<layer>/<scalar>`` of
    conv1 and conv2 (``FilterReport.scalars``), ``gridding4``/``gridding4_start``/``gridding4_rel``
    at the common 4 px period and ``gridding_own``... at the net's own, on ``probes`` validation
    images; ``reports`` holds the two ``FilterReport``s (for figures)."""
    ckpt = read_checkpoint(path, "checkpoint")
    model, cfg = load_network(ckpt)
    start = filter_start(ckpt)
    images, _ = validation_images(cfg)
    features = model.features
    positive = never_positive(features, ["conv1", "conv2"], images)
    out: dict[str, Any] = {"reports": {}}
    for name in ("conv1", "conv2"):
        report = layer_report(model, name, start, positive[name], **options)
        out["reports"][name] = report
        out.update({f"{name}/{k}": v for k, v in report.scalars().items()})
    own = int(receptive_field(features, "conv2")[1] // features.conv2.stride[0])
    probe = images[:probes]
    for tag, period in (("4", COMMON_PERIOD), ("_own", own)):
        now, then = gridding(model, start, probe, period)
        out[f"gridding{tag}"], out[f"gridding{tag}_start"] = now, then
        out[f"gridding{tag}_rel"] = now / then if then == then and then > 0 else float("nan")
    out["weights"] = features.conv1.weight.detach().clone()
    return out
