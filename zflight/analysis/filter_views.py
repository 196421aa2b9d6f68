"""Pictures of deeper filters in input pixels: what a conv2 filter looks for, readable as an image.

A conv2 filter has one 5x5 slice per conv1 channel (24 in the default net, 96 in the paper's), so
no single slice shows what it does. Its linear view reduces the channels through the layers below,
as linear maps: each tap spreads over its pooling window (the transpose of average pooling) and
each channel becomes its conv1 filter placed at conv1's stride (the transpose of conv1). ReLU and
LRN are left out, so the view is the pattern of input pixels the filter's response grows with
most, to first order. Its size is the layer's receptive field (27 px for ZFNet's conv2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pair(v: int | tuple[int, ...]) -> int:
    return int(v[0] if isinstance(v, tuple) else v)


def linear_view(
    trunk: nn.Sequential, layer: str, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """(C_out, C_in0, R, R) the filters of conv ``layer`` of ``trunk`` seen in the trunk's input
    pixels: transposed through every conv (its weights, stride, no bias) and pool (a box of its
    size, stride) below it; ReLU, normalisation and dropout are identities. ``weight`` replaces the
    layer's own (e.g. only the part training added). Computed in fp64, returned in fp32."""
    names = list(trunk._modules)
    if layer not in names:
        raise KeyError(f"no layer {layer!r} in the trunk; valid: {', '.join(names)}")
    conv = trunk._modules[layer]
    x = (conv.weight if weight is None else weight).detach().double().cpu()
    for name in reversed(names[: names.index(layer)]):
        m = trunk._modules[name]
        if isinstance(m, nn.Conv2d):
            x = F.conv_transpose2d(x, m.weight.detach().double().cpu(), stride=m.stride)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            k, s = _pair(m.kernel_size), _pair(m.stride or m.kernel_size)
            box = torch.full((x.shape[1], 1, k, k), 1.0 / (k * k), dtype=x.dtype)
            x = F.conv_transpose2d(x, box, stride=s, groups=x.shape[1])
    return x.float()
