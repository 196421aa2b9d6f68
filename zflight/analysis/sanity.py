"""The model-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

The layers' weights are replaced by random ones cumulatively from the top (the output layer
first, then the one below it, ...), and each method's maps are compared with the trained net's by
Spearman rank correlation. A map that explains what the network learned must change as the
learned weights go; one that stays correlated shows the input (edges, the object's outline), not
the network. The random weights here are the run's own start weights: the draw the network was
trained from, at the scale it was initialised at.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from zflight.analysis.localization import RTOL

SURVIVES = 0.5  # rank correlation at or above this with every layer randomised: the map survives


def layers_top_down(model: nn.Module) -> list[tuple[str, str]]:
    """(short name, dotted name) of every module holding weights of its own (convolutions,
    linear layers), the output layer first.

    Short names are the last name component (``fc8``, ``conv1``) where those are unique, else the
    dotted name. Definition order is taken as forward order (true of ZFNet, torchvision's AlexNet
    and VGG).
    """
    found = [
        name
        for name, m in model.named_modules()
        if name and next(m.parameters(recurse=False), None) is not None
    ]
    short = [name.rsplit(".", 1)[-1] for name in found]
    names = short if len(set(short)) == len(short) else found
    return list(zip(names, found))[::-1]


def cascading_randomisation(
    model: nn.Module,
    start: Mapping[str, Tensor],
    attribute: Callable[[nn.Module], dict[str, Tensor]],
    layers: list[tuple[str, str]] | None = None,
) -> list[tuple[str, dict[str, Tensor]]]:
    """Maps of a copy of ``model`` with its layers set to ``start`` cumulatively from the top.

    ``start`` is a state dict of the same model at its start (missing entries: that layer is
    left trained); ``attribute(net)`` returns ``{method: (N, H, W) maps}``. Returns
    ``[("trained", maps), (top layer, maps), ...]``, one entry per depth, the last with every
    layer in ``layers`` (default ``layers_top_down``) randomised. ``model`` itself is untouched.
    """
    net = copy.deepcopy(model)
    modules = dict(net.named_modules())
    out = [("trained", attribute(net))]
    with torch.no_grad():
        for short, name in layers if layers is not None else layers_top_down(net):
            for pname, p in modules[name].named_parameters(recurse=False):
                key = f"{name}.{pname}"
                if key in start:
                    p.copy_(start[key].to(p.device, p.dtype))
            out.append((short, attribute(net)))
    return out


def average_ranks(x: Tensor, rtol: float = RTOL) -> Tensor:
    """(N, P) ranks of each row's values, 0-based; tied values share their mean rank. Values are
    first rounded to multiples of ``rtol`` times the row's largest magnitude, so values equal but
    for floating-point rounding tie instead of taking an order from it."""
    x = x.double()
    step = rtol * x.abs().amax(1, keepdim=True)
    x = torch.where(step > 0, torch.round(x / step.clamp_min(1e-300)), x)
    sorted_x, order = x.sort(dim=1, stable=True)
    # runs of equal values: each takes the mean of the positions it spans
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    run = new_run.long().cumsum(1) - 1
    position = torch.arange(x.shape[1], dtype=torch.float64, device=x.device).expand_as(x)
    total = torch.zeros_like(x).scatter_add_(1, run, position)
    count = torch.zeros_like(x).scatter_add_(1, run, torch.ones_like(x))
    mean_rank = (total / count.clamp_min(1)).gather(1, run)
    return torch.empty_like(x).scatter_(1, order, mean_rank)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """(N,) Spearman rank correlation between maps ``a`` and ``b`` (N, ...), ties at mean rank;
    0 where either map is constant (no order to compare)."""
    ra = average_ranks(a.flatten(1))
    rb = average_ranks(b.flatten(1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))
