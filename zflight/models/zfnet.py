"""ZFNet (Zeiler & Fergus 2013) and the AlexNet-style baseline it was compared against.

Both share one layout: a ``features`` trunk of plain, named modules (Conv2d, ReLU, MaxPool2d,
LocalResponseNorm) that the deconvnet can walk, an adaptive pool that lets small images through,
and a ``classifier`` head. Layer names are stable: ``conv1``..``conv5``, ``fc6``..``fc8``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FirstLayers:
    """Kernel, stride and padding of conv1 and conv2: the only place the two nets differ."""

    conv1_kernel: int
    conv1_stride: int
    conv1_padding: int
    conv2_stride: int
    conv2_padding: int
    pool_padding: int


# 224 -> 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 13 -> 6, the paper's published map sizes.
ZFNET_LAYERS = FirstLayers(7, 2, 1, 2, 0, 1)
# 224 -> 55 -> 27 -> 27 -> 13 -> 13 -> 13 -> 13 -> 6 (Krizhevsky et al. 2012, single tower).
ALEXNET_LAYERS = FirstLayers(11, 4, 2, 1, 2, 0)


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class ZFNet(nn.Module):
    """ZFNet-shaped network: five conv layers, three fully connected, LRN after pools 1 and 2.

    Args:
        num_classes: size of fc8.
        width: multiplier on every conv and hidden fc width (1.0 is the paper's net).
        layers: first-layer geometry, ``ZFNET_LAYERS`` or ``ALEXNET_LAYERS``.
        head_pool: side of the adaptive average pool before fc6 (6 at 224 px is the identity).
        dropout: dropout before fc6 and fc7.
        init: ``"kaiming"`` (trains reliably with any optimizer) or ``"paper"`` (N(0, 1e-2), bias 0).
        conv1_std: standard deviation of conv1's initial weights instead of the ``init`` rule's
            (None). A small start (the paper's 0.01) keeps conv1's random initial pattern from
            hiding what training learns in the filters and their deconvnet projections.
        lrn: module class used for local response normalisation (swap in a faster exact one).
        pool: module class used for max pooling (same constructor as ``nn.MaxPool2d``).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        width: float = 1.0,
        layers: FirstLayers = ZFNET_LAYERS,
        head_pool: int = 6,
        dropout: float = 0.5,
        init: str = "kaiming",
        conv1_std: float | None = None,
        lrn: type[nn.Module] = nn.LocalResponseNorm,
        pool: type[nn.Module] = nn.MaxPool2d,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (_scaled(c, width) for c in (96, 256, 384, 384, 256))
        hidden = _scaled(4096, width)
        pp = layers.pool_padding
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(
                    3, c1, layers.conv1_kernel, layers.conv1_stride, layers.conv1_padding
                ),
                relu1=nn.ReLU(),
                pool1=pool(3, 2, pp),
                norm1=lrn(5, alpha=1e-4, beta=0.75, k=2.0),
                conv2=nn.Conv2d(c1, c2, 5, layers.conv2_stride, layers.conv2_padding),
                relu2=nn.ReLU(),
                pool2=pool(3, 2, pp),
                norm2=lrn(5, alpha=1e-4, beta=0.75, k=2.0),
                conv3=nn.Conv2d(c2, c3, 3, 1, 1),
                relu3=nn.ReLU(),
                conv4=nn.Conv2d(c3, c4, 3, 1, 1),
                relu4=nn.ReLU(),
                conv5=nn.Conv2d(c4, c5, 3, 1, 1),
                relu5=nn.ReLU(),
                pool5=pool(3, 2, 0),
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d(head_pool)
        self.classifier = nn.Sequential(
            OrderedDict(
                drop6=nn.Dropout(dropout),
                fc6=nn.Linear(c5 * head_pool * head_pool, hidden),
                relu6=nn.ReLU(),
                drop7=nn.Dropout(dropout),
                fc7=nn.Linear(hidden, hidden),
                relu7=nn.ReLU(),
                fc8=nn.Linear(hidden, num_classes),
            )
        )
        self.reset_parameters(init, conv1_std)

    def reset_parameters(self, init: str = "kaiming", conv1_std: float | None = None) -> None:
        if init not in ("kaiming", "paper"):
            raise ValueError(f"model.init must be one of 'kaiming', 'paper'; got {init!r}")
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if init == "paper":
                    nn.init.normal_(m.weight, 0.0, 1e-2)
                else:
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if conv1_std is not None:
            nn.init.normal_(self.features.conv1.weight, 0.0, conv1_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def layer(self, name: str) -> nn.Module:
        """The module called ``name`` (``conv1``..``conv5``, ``fc6``..``fc8``, ``pool5``...)."""
        for part in (self.features, self.classifier):
            if name in part._modules:
                return part._modules[name]
        valid = list(self.features._modules) + list(self.classifier._modules)
        raise KeyError(f"no layer {name!r}; valid names: {', '.join(valid)}")


def zfnet(*, num_classes: int = 1000, **kwargs) -> ZFNet:
    """ZFNet as in the paper: conv1 7x7/2, conv2 5x5/2."""
    return ZFNet(num_classes, layers=ZFNET_LAYERS, **kwargs)


def alexnet_style(*, num_classes: int = 1000, **kwargs) -> ZFNet:
    """The baseline ZFNet improved on: conv1 11x11/4, conv2 5x5/1, otherwise the same net."""
    return ZFNet(num_classes, layers=ALEXNET_LAYERS, **kwargs)
