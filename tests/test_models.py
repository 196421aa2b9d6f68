"""ZFNet against the paper's published numbers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zflight.models import create_model


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of every Conv2d and Linear, counted from the shapes hooks see."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += (
                out.numel()
                // out.shape[0]
                * (m.in_channels // m.groups)
                * m.kernel_size[0]
                * m.kernel_size[1]
            )
        else:
            total += m.in_features * m.out_features

    hs = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return total


@pytest.fixture(scope="module")
def zfnet() -> nn.Module:
    return create_model("zfnet", num_classes=1000).eval()


def test_parameter_count_matches_paper(zfnet):
    assert sum(p.numel() for p in zfnet.parameters()) == 62_357_608


def test_flops_match_paper(zfnet):
    macs = count_macs(zfnet, torch.zeros(1, 3, 224, 224))
    assert macs == 1_168_032_896
    assert round(2 * macs / 1e9, 3) == 2.336


def test_map_sizes_match_paper(zfnet):
    sizes = {}
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        for name, m in zfnet.features.named_children():
            x = m(x)
            sizes[name] = x.shape[-1]
    assert [
        sizes[k] for k in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")
    ] == [110, 55, 26, 13, 13, 13, 13, 6]
    assert zfnet.layer("conv1").kernel_size == (7, 7) and zfnet.layer("conv1").stride == (2, 2)
    assert zfnet.layer("fc8").out_features == 1000 and zfnet.layer("fc6").out_features == 4096


def test_alexnet_style_first_layers():
    m = create_model("alexnet_style", num_classes=1000)
    assert m.layer("conv1").kernel_size == (11, 11) and m.layer("conv1").stride == (4, 4)
    assert m.layer("conv2").stride == (1, 1)
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        assert m.features(x).shape == (1, 256, 6, 6)
        assert m(x).shape == (1, 1000)


@pytest.mark.parametrize("name", ["zfnet", "alexnet_style"])
def test_small_images_and_width(name):
    m = create_model(name, num_classes=8, width=0.25, head_pool=2)
    assert m.layer("conv1").out_channels == 24 and m.layer("fc6").out_features == 1024
    assert m(torch.zeros(2, 3, 64, 64)).shape == (2, 8)


def test_paper_init_and_unknown_names():
    m = create_model("zfnet", num_classes=10, width=0.25, init="paper")
    w = m.layer("conv2").weight
    assert abs(w.std().item() - 1e-2) < 1e-3 and m.layer("conv2").bias.abs().max() == 0
    with pytest.raises(KeyError, match="valid: alexnet_style, zfnet"):
        create_model("resnet")
    with pytest.raises(KeyError, match="valid names"):
        m.layer("conv9")
    with pytest.raises(ValueError, match="kaiming"):
        create_model("zfnet", init="xavier")


def test_conv1_std_sets_only_the_first_layer():
    torch.manual_seed(0)
    m = create_model("zfnet", num_classes=10, width=0.5, conv1_std=1e-3)
    assert abs(m.layer("conv1").weight.std().item() - 1e-3) < 1e-4
    fan_in = m.layer("conv2").weight[0].numel()  # kaiming: std sqrt(2 / fan_in)
    assert (
        abs(m.layer("conv2").weight.std().item() - (2 / fan_in) ** 0.5) < 0.05 * (2 / fan_in) ** 0.5
    )


def test_no_inplace_relu():
    m = create_model("zfnet", width=0.25)
    assert all(not r.inplace for r in m.modules() if isinstance(r, nn.ReLU))


@pytest.mark.parametrize("ops", ["torch", "fast"])
def test_channels_last_module_computes_the_same_loss_and_gradients(ops):
    """`trainer.channels_last` (on by default) changes the memory layout, not the mathematics."""
    from zflight.models.fast_ops import LRN_IMPLS, POOL_IMPLS
    from zflight.module import ClassifierModule

    torch.manual_seed(0)
    net = create_model(
        "zfnet",
        num_classes=8,
        width=0.125,
        head_pool=2,
        dropout=0.0,
        lrn=LRN_IMPLS[ops],
        pool=POOL_IMPLS[ops],
    ).double()
    images = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    labels = torch.tensor([0, 3, 5, 7])
    results = []
    for channels_last in (False, True):
        module = ClassifierModule(copy.deepcopy(net), 8, channels_last=channels_last)
        loss = nn.functional.cross_entropy(module(images), labels)
        loss.backward()
        results.append((loss, [p.grad for p in module.model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-12, atol=1e-12)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(gb, ga, rtol=1e-9, atol=1e-12)
