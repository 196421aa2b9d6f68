"""Incremental inference against the full re-run: ZFNet, awkward generic trunks, switch points,
chunking, image order, autocast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.test_occlusion import small_zfnet
from zflight.analysis.incremental import IncrementalTrunk, layer_kind
from zflight.analysis.occlusion import occlusion_maps
from zflight.models import alexnet_style, zfnet

pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops


@pytest.mark.parametrize("builder", [zfnet, alexnet_style])
@pytest.mark.parametrize("fill", ["mean", "zero", "blur"])
def test_incremental_equals_full_rerun_on_zfnet(builder, fill):
    model = small_zfnet(builder)
    torch.manual_seed(1)
    images, labels = torch.randn(1, 3, 64, 64), torch.tensor([3])
    kw = dict(size=(12, 9), stride=(5, 4), fill=fill, mean=(0.5,) * 3, std=(0.3,) * 3)
    full = occlusion_maps(model, images, labels, method="full", **kw)
    inc = occlusion_maps(model, images, labels, method="incremental", **kw)
    assert full.prob.shape == (1, 12, 15)
    assert torch.allclose(inc.prob, full.prob, atol=1e-5)
    assert torch.equal(inc.channel, full.channel)
    assert torch.allclose(inc.feature, full.feature, rtol=1e-4, atol=1e-4)
    same = inc.label == full.label
    close = (inc.prob - full.prob).abs() < 1e-4  # labels may differ only at numerical ties
    assert same.float().mean() > 0.99 and (same | close).all()


@pytest.mark.parametrize("full_fraction", [0.0, 0.3, 1.01])
def test_incremental_at_any_switch_point_equals_full(full_fraction):
    model = small_zfnet()
    torch.manual_seed(2)
    images, labels = torch.randn(1, 3, 80, 80), torch.tensor([2])
    full = occlusion_maps(model, images, labels, size=16, stride=6, method="full")
    inc = occlusion_maps(
        model, images, labels, size=16, stride=6, method="incremental", full_fraction=full_fraction
    )
    assert torch.allclose(inc.prob, full.prob, atol=1e-5)
    assert torch.allclose(inc.feature, full.feature, rtol=1e-4, atol=1e-4)
    engine = IncrementalTrunk(model.features, full_fraction)
    engine.prepare(images)
    modes = [s.mode for s in engine.plan((16, 16))]
    assert ("window" in modes) == (full_fraction > 0)
    assert ("full" in modes) == (full_fraction <= 1)


class OddTrunk(nn.Module):
    """Every layer type the engine handles, in awkward geometry, then one it does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5, stride=2, padding=3, dilation=2),
            nn.LeakyReLU(0.1),
            nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
            nn.BatchNorm2d(6),
            nn.GELU(),
            nn.Conv2d(6, 8, 1, stride=2),
            nn.LocalResponseNorm(3),
            nn.Identity(),
            nn.Conv2d(8, 8, (3, 2), stride=(1, 2), padding=(1, 0)),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(8, 4, 3, padding=1),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(16, 3)
        nn.init.normal_(self.features[3].running_mean)
        nn.init.uniform_(self.features[3].running_var, 0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def test_generic_trunk_with_margins_and_an_unknown_layer():
    torch.manual_seed(3)
    model = OddTrunk().eval()
    images, labels = torch.randn(2, 3, 45, 38), torch.tensor([0, 2])
    engine = IncrementalTrunk(model.features, full_fraction=0.9)
    engine.prepare(images)
    steps = engine.plan((7, 7))
    window, point = "window", "pointwise"
    assert [s.mode for s in steps] == [
        window,
        point,
        window,
        point,
        point,
        window,
        point,
        point,
        window,
        point,
        "full",
        "full",
    ]  # Upsample: unknown
    assert any(any(m) for s in steps for m in s.margins)  # windows stick out of some regions
    kw = dict(size=7, stride=3, feature_layer="8")
    full = occlusion_maps(model, images, labels, method="full", **kw)
    inc = occlusion_maps(model, images, labels, method="incremental", full_fraction=0.9, **kw)
    assert torch.allclose(inc.prob, full.prob, atol=1e-5)
    assert torch.allclose(inc.feature, full.feature, rtol=1e-4, atol=1e-4)


def test_layer_kinds():
    assert layer_kind(nn.Conv2d(3, 3, 3)) == "local"
    assert layer_kind(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")) == "other"
    assert layer_kind(nn.Conv2d(3, 3, 3, padding="same")) == "other"
    assert layer_kind(nn.MaxPool2d(2, return_indices=True)) == "other"
    assert layer_kind(nn.LocalResponseNorm(5)) == "pointwise"
    assert layer_kind(nn.BatchNorm2d(3).eval()) == "pointwise"
    assert layer_kind(nn.BatchNorm2d(3).train()) == "other"
    assert layer_kind(nn.Dropout().train()) == "other"

    class Scaled(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)

    class Declared(nn.Module):
        spatially_pointwise = True

    assert layer_kind(Scaled(3, 3, 3)) == "other"
    assert layer_kind(Declared()) == "pointwise"


@pytest.mark.parametrize("method", ["incremental", "full"])
def test_chunk_size_does_not_change_the_maps(method):
    model = small_zfnet()
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 4])
    big = occlusion_maps(
        model, images, labels, size=24, stride=16, method=method
    )  # 2 x 9 positions
    one = occlusion_maps(
        model, images, labels, size=24, stride=16, method=method, max_batch_bytes=1
    )
    assert torch.allclose(one.prob, big.prob, atol=1e-6)
    assert torch.allclose(one.feature, big.feature, rtol=1e-5, atol=1e-5)
    assert torch.equal(one.label, big.label)


def test_image_order_does_not_change_the_maps():
    model = small_zfnet()
    images, labels = torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 2])
    perm = torch.tensor([2, 0, 1])
    a = occlusion_maps(model, images, labels, size=16, stride=8)
    b = occlusion_maps(model, images[perm], labels[perm], size=16, stride=8)
    assert torch.allclose(b.prob, a.prob[perm], atol=1e-6)
    assert torch.allclose(b.feature, a.feature[perm], rtol=1e-5, atol=1e-5)
    assert torch.equal(b.channel, a.channel[perm])


def test_bf16_autocast_stays_close_to_full_precision():
    model = small_zfnet()
    images, labels = torch.randn(1, 3, 64, 64), torch.tensor([1])
    ref = occlusion_maps(model, images, labels, size=16, stride=8, method="full")
    bf16 = occlusion_maps(
        model,
        images,
        labels,
        size=16,
        stride=8,
        autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    )
    assert bf16.prob.dtype == torch.float32
    assert (bf16.prob - ref.prob).abs().max() < 0.02
