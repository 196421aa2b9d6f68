"""Linear views of deeper filters in input pixels, against autograd on the linearised trunk."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from zflight.analysis.deconvnet import receptive_field
from zflight.analysis.filter_views import linear_view


def trunk(k1: int, s1: int, pool: type[nn.Module]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 6, k1, s1, bias=False),
            relu1=nn.ReLU(),
            pool1=pool(3, 2),
            norm1=nn.LocalResponseNorm(5),
            conv2=nn.Conv2d(6, 4, 5, 2, bias=False),
        )
    ).double()


@pytest.mark.parametrize(("k1", "s1"), [(7, 2), (11, 4)])
def test_linear_view_is_the_input_gradient_of_the_linearised_trunk(k1, s1):
    net = trunk(k1, s1, nn.MaxPool2d)
    view = linear_view(net, "conv2")
    size = receptive_field(net, "conv2")[0]
    assert view.shape == (4, 3, size, size)  # 27 px for ZFNet's conv1, 51 for AlexNet-style's
    # the same layers as linear maps: no ReLU or LRN, average pooling; one output position
    linear = nn.Sequential(net.conv1, nn.AvgPool2d(3, 2), net.conv2)
    x = torch.zeros(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    for o in range(4):
        (grad,) = torch.autograd.grad(linear(x)[0, o, 0, 0], x)
        assert torch.allclose(view[o].double(), grad[0], atol=1e-6)


def test_linear_view_of_a_replacement_weight_and_of_conv1_itself():
    net = trunk(7, 2, nn.MaxPool2d)
    assert torch.equal(linear_view(net, "conv1"), net.conv1.weight.float())
    zero = torch.zeros_like(net.conv2.weight)
    assert linear_view(net, "conv2", zero).abs().max() == 0
    with pytest.raises(KeyError, match="valid"):
        linear_view(net, "conv9")
