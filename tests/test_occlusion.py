"""Occlusion maps against closed forms: window rule, linear and two-class models, upsampling,
sharding, fills, and the fallback for models that do not split into trunk and head."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from zflight.analysis.images import denormalize
from zflight.analysis.occlusion import (
    OcclusionMaps,
    fill_images,
    occlusion_maps,
    split_network,
    window_starts,
)
from zflight.models import zfnet

pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops


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


def small_zfnet(builder=zfnet):
    """A narrow ZFNet (LRN included) for 64 px images, seeded."""
    torch.manual_seed(0)
    return builder(num_classes=5, width=0.125, head_pool=2).eval()


def test_shards_cover_every_position_once():
    """Each rank's share, concatenated in rank order, is the single-process result."""
    model = small_zfnet()
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
