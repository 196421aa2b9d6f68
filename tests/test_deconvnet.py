"""The deconvnet against closed forms and the autograd definition it must equal."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zflight.analysis.deconvnet import Deconvnet, receptive_field, resolve_layer, transposed_conv
from zflight.models import alexnet_style, zfnet


class _RectifiedGrad(torch.autograd.Function):
    """ReLU forward, ReLU(grad) backward: the deconvnet's rule as an autograd function."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp_min(0)


class _PassGrad(torch.autograd.Function):
    """Apply a module forward, pass the gradient through unchanged (LRN as identity)."""

    @staticmethod
    def forward(ctx, x, module):
        return module(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def autograd_deconv(
    trunk: nn.Sequential,
    layer: str,
    images: torch.Tensor,
    channels: torch.Tensor,
    positions: torch.Tensor | None = None,
    lrn: str = "gradient",
) -> torch.Tensor:
    """Gradient of the chosen activation, seeded with its value, every ReLU backward -> ReLU(grad)."""
    x = images.clone().requires_grad_(True)
    h = x
    for module in list(trunk)[: resolve_layer(trunk, layer) + 1]:
        if isinstance(module, nn.ReLU):
            h = _RectifiedGrad.apply(h)
        elif isinstance(module, nn.LocalResponseNorm) and lrn == "identity":
            h = _PassGrad.apply(h, module)
        else:
            h = module(h)
    flat = h.flatten(2)
    rows = torch.arange(len(images))
    if positions is None:
        positions = flat[rows, channels].argmax(1)
    seed = torch.zeros_like(flat)
    seed[rows, channels, positions] = flat[rows, channels, positions].detach()
    (grad,) = torch.autograd.grad(h, x, seed.view_as(h))
    return grad


def _tiny_zfnet_trunk(lrn: bool = False, **kw) -> nn.Sequential:
    torch.manual_seed(0)
    trunk = copy.deepcopy(zfnet(num_classes=8, width=0.125, **kw).features).double().eval()
    if not lrn:
        trunk.norm1 = nn.Identity()
        trunk.norm2 = nn.Identity()
    return trunk


ZF_LAYERS = ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]


@pytest.mark.parametrize("layer", ZF_LAYERS)
def test_matches_autograd_definition_on_zfnet_without_lrn(layer):
    trunk = _tiny_zfnet_trunk()
    torch.manual_seed(1)
    images = torch.randn(3, 3, 67, 67, dtype=torch.float64)
    channels = torch.tensor([0, 5, 11])
    ours = Deconvnet(trunk).project(images, layer, channels)
    ref = autograd_deconv(trunk, layer, images, channels)
    assert ours.shape == images.shape
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_zfnet_pools_really_share_switches():
    """The equality above covers the summing case: ZFNet's 3x3/2 pools reuse switches."""
    trunk = _tiny_zfnet_trunk()
    x = trunk[:2](torch.randn(1, 3, 67, 67, dtype=torch.float64))
    _, idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    per_map = idx.flatten(2)[0]
    distinct = sum(len(torch.unique(m)) for m in per_map)
    assert distinct < per_map.numel()


def test_explicit_positions_match_autograd():
    trunk = _tiny_zfnet_trunk()
    torch.manual_seed(2)
    images = torch.randn(4, 3, 65, 65, dtype=torch.float64)
    channels = torch.tensor([1, 2, 3, 4])
    positions = torch.tensor([0, 3, 7, 8])
    ours = Deconvnet(trunk).project(images, "conv3", channels, positions)
    ref = autograd_deconv(trunk, "conv3", images, channels, positions)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["identity", "gradient"])
def test_lrn_modes_match_their_autograd_formulation(mode):
    trunk = _tiny_zfnet_trunk(lrn=True)
    torch.manual_seed(3)
    images = torch.randn(2, 3, 67, 67, dtype=torch.float64) * 30
    channels = torch.tensor([2, 7])
    ours = Deconvnet(trunk, lrn=mode).project(images, "conv4", channels)
    ref = autograd_deconv(trunk, "conv4", images, channels, lrn=mode)
    other = autograd_deconv(
        trunk, "conv4", images, channels, lrn="gradient" if mode == "identity" else "identity"
    )
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ours, other, rtol=1e-6, atol=0)


def test_unknown_lrn_mode_is_refused():
    with pytest.raises(ValueError, match="identity, gradient"):
        Deconvnet(nn.Sequential(nn.Conv2d(3, 1, 3)), lrn="inverse")


def test_overlapping_switches_are_summed_not_overwritten():
    """Pool 3x3/2 on 5x5 with one dominant centre: all four windows pick it; a 2x2 conv of ones
    reads them all. Projecting that unit (value 4v) sends 4v back through each window: 16v."""
    v = 10.0
    image = torch.rand(1, 1, 5, 5)
    image[0, 0, 2, 2] = v
    conv = nn.Conv2d(1, 1, 2, bias=False)
    nn.init.ones_(conv.weight)
    trunk = nn.Sequential(nn.MaxPool2d(3, 2), conv, nn.ReLU())
    proj = Deconvnet(trunk).project(image, "1", torch.tensor([0]))
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 2, 2] = 16 * v
    torch.testing.assert_close(proj, expected)
    _, idx = F.max_pool2d(image, 3, 2, return_indices=True)
    unpooled = nn.MaxUnpool2d(3, 2)(torch.full((1, 1, 2, 2), 4 * v), idx, output_size=(5, 5))
    assert unpooled[0, 0, 2, 2] == 4 * v


@pytest.mark.parametrize("py,px", [(0, 0), (3, 5), (7, 7)])
def test_single_conv_projection_is_value_times_filter(py, px):
    """conv 5x5/2 pad 2 then ReLU: one unit projects to its activation times its filter."""
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 4, 5, stride=2, padding=2)
    trunk = nn.Sequential(conv, nn.ReLU())
    image = torch.rand(1, 3, 16, 16)
    act = trunk(image)[0, 2]
    w = act.shape[1]
    pos = py * w + px
    proj = Deconvnet(trunk).project(image, "0", torch.tensor([2]), torch.tensor([pos]))
    size, stride, offset = receptive_field(trunk, "0")
    padded = torch.zeros(3, 16 + 4, 16 + 4)
    top, left = offset + py * stride + 2, offset + px * stride + 2
    padded[:, top : top + size, left : left + size] = act[py, px] * conv.weight[2].detach()
    torch.testing.assert_close(proj[0], padded[:, 2:-2, 2:-2])


def test_default_position_is_the_channel_argmax():
    trunk = _tiny_zfnet_trunk()
    images = torch.randn(2, 3, 67, 67, dtype=torch.float64)
    channels = torch.tensor([3, 4])
    act = trunk[:2](images).flatten(2)
    best = act[torch.arange(2), channels].argmax(1)
    deconv = Deconvnet(trunk)
    torch.testing.assert_close(
        deconv.project(images, "conv1", channels), deconv.project(images, "conv1", channels, best)
    )


def test_ambiguous_sizes_come_back_to_the_input_size():
    torch.manual_seed(5)
    trunk = copy.deepcopy(zfnet(num_classes=8, width=0.05).features).eval()
    image = torch.randn(1, 3, 224, 224)
    assert trunk[:1](image).shape[-1] == 110
    bare = F.conv_transpose2d(
        torch.zeros(1, 96, 110, 110), torch.zeros(96, 3, 7, 7), stride=2, padding=1
    )
    assert bare.shape[-1] == 223
    assert Deconvnet(trunk).project(image, "conv1", torch.tensor([0])).shape == (1, 3, 224, 224)
    conv = trunk.conv1
    back = transposed_conv(
        conv, torch.ones(1, conv.out_channels, 110, 110), torch.Size((1, 3, 224, 224))
    )
    assert back.shape[-2:] == (224, 224)


@pytest.mark.parametrize("size", [63, 65, 66, 97, 101])
def test_odd_sizes_round_trip(size):
    trunk = _tiny_zfnet_trunk()
    images = torch.randn(1, 3, size, size + 2, dtype=torch.float64)
    proj = Deconvnet(trunk).project(images, "pool5", torch.tensor([1]))
    assert proj.shape == images.shape
    ref = autograd_deconv(trunk, "pool5", images, torch.tensor([1]))
    torch.testing.assert_close(proj, ref, rtol=1e-9, atol=1e-12)


@functools.cache
def _torchvision_trunk(arch: str) -> nn.Sequential:
    """torchvision's ``features``; vgg11's is built alone (``make_layers(cfgs["A"])`` is exactly
    what ``vgg11()`` uses) to skip initialising its 120M-parameter classifier."""
    from torchvision.models import alexnet, vgg

    torch.manual_seed(6)
    if arch == "vgg11":
        return vgg.make_layers(vgg.cfgs["A"]).double().eval()
    return alexnet(weights=None).features.double().eval()


@pytest.mark.parametrize(
    "arch,size,layer",
    [
        ("alexnet", 67, "conv5"),
        ("alexnet", 67, "12"),
        ("vgg11", 32, "conv8"),
        ("vgg11", 32, "conv3"),
    ],
)
def test_torchvision_trunks(arch, size, layer):
    trunk = _torchvision_trunk(arch)
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in trunk)
    images = torch.randn(2, 3, size, size, dtype=torch.float64)
    channels = torch.tensor([0, 9])
    ours = Deconvnet(trunk).project(images, layer, channels)
    ref = autograd_deconv(trunk, layer, images, channels)
    assert ours.shape == images.shape and ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_layer_names_resolve_to_rectified_maps():
    trunk = _tiny_zfnet_trunk()
    names = list(trunk._modules)
    assert names[resolve_layer(trunk, "conv1")] == "relu1"
    assert names[resolve_layer(trunk, "pool5")] == "pool5"
    with pytest.raises(KeyError, match="conv1..conv5"):
        resolve_layer(trunk, "conv9")


ZF_FIELDS = [7, 11, 27, 43, 75, 107, 139, 171]
ALEX_FIELDS = [11, 19, 51, 67, 99, 131, 163, 195]


@pytest.mark.parametrize("builder,fields", [(zfnet, ZF_FIELDS), (alexnet_style, ALEX_FIELDS)])
def test_receptive_field_sizes_match_the_paper(builder, fields):
    trunk = builder(num_classes=2, width=0.05).features
    assert [receptive_field(trunk, name)[0] for name in ZF_LAYERS] == fields
    expected = (2, -1) if builder is zfnet else (4, -2)
    assert receptive_field(trunk, "conv1")[1:] == expected
    assert receptive_field(trunk, "pool5")[1] == 32


@pytest.mark.parametrize("layer", ZF_LAYERS)
def test_receptive_field_box_is_the_gradient_support(layer):
    """Positive weights and inputs, average pools: a unit's gradient is positive exactly on its
    receptive field (clipped to the image), an independent reading of size/stride/offset."""
    torch.manual_seed(7)
    net = zfnet(num_classes=2, width=0.05).features
    trunk = nn.Sequential(
        *[
            nn.AvgPool2d(m.kernel_size, m.stride, m.padding)
            if isinstance(m, nn.MaxPool2d)
            else nn.Identity()
            if isinstance(m, nn.LocalResponseNorm)
            else m
            for m in net
        ]
    ).double()
    for p in trunk.parameters():
        p.data.abs_()
    x = torch.rand(1, 3, 224, 224, dtype=torch.float64, requires_grad=True)
    out = trunk[: resolve_layer(net, layer) + 1](x)
    size, stride, offset = receptive_field(trunk, str(resolve_layer(net, layer)))
    for py, px in [(out.shape[2] // 2, out.shape[3] // 3), (0, 0)]:
        (g,) = torch.autograd.grad(out[0, 0, py, px], x, retain_graph=True)
        support = g[0].abs().sum(0) > 0
        expected = torch.zeros(224, 224, dtype=torch.bool)
        top, left = offset + py * stride, offset + px * stride
        expected[max(top, 0) : top + size, max(left, 0) : left + size] = True
        assert torch.equal(support, expected)
