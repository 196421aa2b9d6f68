"""Occlusion maps against closed forms, and incremental inference against the full re-run."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from zflight.analysis.images import denormalize
from zflight.analysis.incremental import IncrementalTrunk, layer_kind
from zflight.analysis.occlusion import (
    OcclusionMaps,
    fill_images,
    occlusion_maps,
    split_network,
    window_starts,
)
from zflight.models import alexnet_style, zfnet


@pytest.fixture(autouse=True)
def one_thread():
    """Many small ops: on a shared 2-core machine one thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class RegionModel(nn.Module):
    """Two logits that are known linear functions of the image.

    ``features`` sums the three channels (map 0) and keeps half of that sum (map 1); logit ``k``
    is ``weights[k]`` times the sum of map 0 over ``regions[k]`` (rows, cols slices) plus
    ``biases[k]``.
    """

    def __init__(
        self,
        size: int,
        regions: list[tuple[slice, slice]],
        weights: list[float],
        biases: list[float],
    ) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 2, 1, bias=False)
        conv.weight.data[0].fill_(1.0)
        conv.weight.data[1].fill_(0.5)
        self.features = nn.Sequential(OrderedDict(conv1=conv))
        self.classifier = nn.Linear(2 * size * size, len(regions))
        self.classifier.weight.data.zero_()
        for k, (rows, cols) in enumerate(regions):
            mask = torch.zeros(2, size, size)
            mask[0, rows, cols] = weights[k]
            self.classifier.weight.data[k] = mask.flatten()
        self.classifier.bias.data = torch.tensor(biases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


def test_window_starts_follow_the_documented_rule():
    assert window_starts(20, 6, 4) == [0, 4, 8, 12, 14]  # flush final window
    assert window_starts(12, 4, 4) == [0, 4, 8]  # grid reaches the border: nothing added
    assert window_starts(8, 4, 3) == [0, 3, 4]
    assert window_starts(5, 5, 2) == [0]
    assert window_starts(3, 8, 2) == [0]  # larger than the image: one clipped window
    with pytest.raises(ValueError, match="stride"):
        window_starts(10, 2, 3)


@pytest.mark.parametrize("method", ["incremental", "full"])
def test_linear_region_model_gives_closed_form_maps(method):
    size, k, w, b = 20, 6, 0.05, 2.75
    rows, cols = (5, 11), (3, 9)
    model = RegionModel(
        size, [(slice(*rows), slice(*cols)), (slice(0, 0), slice(0, 0))], [w, 0.0], [0.0, b]
    )
    images = torch.stack([torch.full((3, size, size), 1.0), torch.full((3, size, size), 0.5)])
    labels = torch.tensor([0, 1])
    maps = occlusion_maps(
        model, images, labels, size=k, stride=4, feature_layer="conv1", method=method
    )
    starts = [0, 4, 8, 12, 14]
    assert maps.tops == starts and maps.lefts == starts
    area = (rows[1] - rows[0]) * (cols[1] - cols[0])
    for n, c in enumerate((1.0, 0.5)):
        for i, t in enumerate(starts):
            for j, left in enumerate(starts):
                hidden = overlap(t, t + k, *rows) * overlap(left, left + k, *cols)
                logit = w * 3 * c * (area - hidden) - b
                p0 = torch.sigmoid(torch.tensor(logit, dtype=torch.float64)).item()
                assert maps.prob[n, i, j].item() == pytest.approx(
                    p0 if n == 0 else 1 - p0, abs=1e-6
                )
                assert maps.label[n, i, j].item() == (0 if logit > 0 else 1)
        # Map 0 (the channel sum) is the strongest; the occluder removes k*k pixels of it.
        assert maps.channel[n].item() == 0
        assert maps.base_feature[n].item() == pytest.approx(3 * c * size * size, rel=1e-6)
        assert torch.allclose(
            maps.feature[n], torch.full((5, 5), 3 * c * (size * size - k * k)), rtol=1e-6
        )
    assert maps.base_label.tolist() == [0, 1]
    assert set(maps.label.flatten().tolist()) == {0, 1}  # the threshold is crossed


def test_label_map_of_a_two_class_model():
    """Logit 0 reads the left half (plus a 0.5 head start), logit 1 the right half: the label
    flips to 1 exactly where the square hides more of the left half than of the right."""
    size = 12
    halves = [(slice(0, size), slice(0, 6)), (slice(0, size), slice(6, size))]
    model = RegionModel(size, halves, [1.0, 1.0], [0.5, 0.0])
    images = torch.ones(1, 3, size, size)
    maps = occlusion_maps(
        model, images, torch.tensor([0]), size=4, stride=2, feature_layer=None, method="incremental"
    )
    assert maps.lefts == [0, 2, 4, 6, 8]
    assert maps.label[0].tolist() == [[1, 1, 0, 0, 0]] * 5
    # Pixels take the label of the nearest covering window (centres 1.5, 3.5, ... 9.5).
    assert maps.label_image()[0].tolist() == [[1] * 5 + [0] * 7] * size


def test_upsample_is_the_mean_over_covering_windows():
    values = torch.tensor([[[1.0, 2.0, 4.0]]])
    maps = OcclusionMaps(
        values,
        values.long(),
        None,
        None,
        torch.ones(1),
        torch.zeros(1),
        None,
        tops=[0],
        lefts=[0, 4, 6],
        size=(3, 4),
        image_size=(3, 10),
    )
    expected = [1.0] * 4 + [2.0] * 2 + [3.0] * 2 + [4.0] * 2
    assert maps.upsample(values)[0].tolist() == [expected] * 3
    assert maps.label_image()[0].tolist() == [[1, 1, 1, 1, 2, 2, 2, 4, 4, 4]] * 3
    drop = maps.upsample(maps.drop())[0, 0]
    assert torch.allclose(drop, 1 - torch.tensor(expected))


def _zfnet(builder=zfnet):
    torch.manual_seed(0)
    return builder(num_classes=5, width=0.125, head_pool=2).eval()


@pytest.mark.parametrize("builder", [zfnet, alexnet_style])
@pytest.mark.parametrize("fill", ["mean", "zero", "blur"])
def test_incremental_equals_full_rerun_on_zfnet(builder, fill):
    model = _zfnet(builder)
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
    model = _zfnet()
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
    model = _zfnet()
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
    model = _zfnet()
    images, labels = torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 2])
    perm = torch.tensor([2, 0, 1])
    a = occlusion_maps(model, images, labels, size=16, stride=8)
    b = occlusion_maps(model, images[perm], labels[perm], size=16, stride=8)
    assert torch.allclose(b.prob, a.prob[perm], atol=1e-6)
    assert torch.allclose(b.feature, a.feature[perm], rtol=1e-5, atol=1e-5)
    assert torch.equal(b.channel, a.channel[perm])


def test_shards_cover_every_position_once():
    """Each rank's share, concatenated in rank order, is the single-process result."""
    model = _zfnet()
    images, labels = torch.randn(1, 3, 64, 64), torch.tensor([3])
    whole = occlusion_maps(model, images, labels, size=16, stride=8)  # 7 x 7 = 49 positions
    shares = []

    def gather(local: torch.Tensor) -> torch.Tensor:
        shares.append(local)
        return torch.zeros(3 * local.shape[0], 3)

    for rank in range(3):
        occlusion_maps(
            model, images, labels, size=16, stride=8, rank=rank, world_size=3, all_gather=gather
        )
    assert [s.shape[0] for s in shares] == [17, 17, 17]
    rows = torch.cat(shares)[:49]
    assert torch.allclose(rows[:, 0], whole.prob.flatten(), atol=1e-6)
    assert torch.allclose(rows[:, 2], whole.feature.flatten(), rtol=1e-5)


def test_fills():
    images = torch.randn(2, 3, 10, 10)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    assert torch.equal(fill_images(images, "mean", (4, 4)), torch.zeros_like(images))
    assert torch.allclose(
        denormalize(fill_images(images, "zero", (4, 4), mean, std), mean, std),
        torch.zeros_like(images),
        atol=1e-6,
    )
    flat = torch.full((1, 3, 10, 10), 0.7)
    assert torch.allclose(fill_images(flat, "blur", (8, 8)), flat)
    blurred = fill_images(images, "blur", (8, 8))
    assert blurred.std() < 0.5 * images.std()
    assert torch.equal(fill_images(images, 1.5, (4, 4)), torch.full_like(images, 1.5))
    with pytest.raises(ValueError, match="fill"):
        fill_images(images, "gray", (4, 4))


def test_models_that_do_not_split_are_rerun_in_full():
    class Doubled(RegionModel):
        def forward(self, x):
            return 2 * super().forward(x)

    model = Doubled(
        8, [(slice(0, 4), slice(0, 4)), (slice(4, 8), slice(4, 8))], [1.0, 1.0], [0.0, 0.0]
    )
    assert split_network(model) is not None
    images, labels = torch.rand(1, 3, 8, 8), torch.tensor([0])
    auto = occlusion_maps(model, images, labels, size=4, stride=4, feature_layer=None)
    full = occlusion_maps(
        model, images, labels, size=4, stride=4, feature_layer=None, method="full"
    )
    assert torch.equal(auto.prob, full.prob)
    assert auto.feature is None
    with pytest.raises(ValueError, match="reproduce"):
        occlusion_maps(
            model, images, labels, size=4, stride=4, feature_layer=None, method="incremental"
        )


def test_bf16_autocast_stays_close_to_full_precision():
    model = _zfnet()
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
