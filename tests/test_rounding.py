"""Scores do not depend on rounding: occlusion drops that are zero in exact arithmetic are zero,
at any thread count, with the images in any order, by either occlusion method."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from zflight.analysis.localization import mass_in_mask, peak_pixel, pointing_game
from zflight.analysis.occlusion import occlusion_maps, window_starts, zero_rtol

S, K, STRIDE = 24, 4, 4
REGION = (slice(14, 20), slice(14, 20))  # the only feature-map pixels the logits read


class ReadsOneCorner(nn.Module):
    """Random 3x3 convolutions, then logits that read the conv2 map only inside ``REGION``.

    conv2's pixel sees a 5x5 input patch, so an occluder that stays 2 px away from ``REGION``
    changes no input of any logit: its drop is zero in exact arithmetic, though the occluded
    batch is computed in other chunks and summation orders than the unoccluded image.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, 16, 3, padding=1),
                relu1=nn.ReLU(),
                conv2=nn.Conv2d(16, 16, 3, padding=1),
                relu2=nn.ReLU(),
            )
        )
        self.classifier = nn.Linear(16 * S * S, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            w = self.classifier.weight.view(5, 16, S, S)
            keep = torch.zeros(S, S, dtype=torch.bool)
            keep[REGION] = True
            w[:, :, ~keep] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _untouched(starts: list[int]) -> torch.Tensor:
    """(rows, cols) bool: windows at least 2 px away from ``REGION`` on some axis."""
    lo, hi = REGION[0].start - 2, REGION[0].stop + 2
    away = torch.tensor([t + K <= lo or t >= hi for t in starts])
    return away[:, None] | away[None, :]


@pytest.fixture(scope="module")
def inputs() -> tuple[ReadsOneCorner, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, S, S, generator=g)
    model = ReadsOneCorner().eval()
    labels = model(images).argmax(1)
    masks = torch.zeros(6, S, S, dtype=torch.bool)
    masks[:, 12:22, 12:22] = True
    masks[3] = False
    masks[3, :6, :6] = True  # an image whose object lies where nothing is read
    return model, images, labels, masks


@pytest.mark.parametrize("method", ["full", "incremental"])
def test_drops_zero_in_exact_arithmetic_are_zero_at_any_thread_count_and_order(inputs, method):
    model, images, labels, masks = inputs
    starts = window_starts(S, K, STRIDE)
    untouched = _untouched(starts)
    threads = torch.get_num_threads()
    results = []
    try:
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            for perm in (torch.arange(6), torch.tensor([5, 3, 1, 0, 2, 4])):
                maps = occlusion_maps(
                    model,
                    images[perm],
                    labels[perm],
                    size=K,
                    stride=STRIDE,
                    feature_layer=None,
                    method=method,
                    max_batch_bytes=200_000,
                )
                back = perm.argsort()
                drop = maps.drop()[back]
                assert (drop[:, untouched] == 0).all()  # exactly zero, whatever the rounding
                pixels = maps.upsample(maps.drop())[back]
                results.append(
                    (
                        pointing_game(pixels, masks),
                        mass_in_mask(pixels, masks),
                        peak_pixel(pixels),
                    )
                )
    finally:
        torch.set_num_threads(threads)
    first = results[0]
    assert not first[0][3] and first[1][3] == 0  # nothing is read on image 3's object
    for hits, mass, peak in results[1:]:
        assert torch.equal(hits, first[0])
        assert torch.equal(peak, first[2])
        torch.testing.assert_close(mass, first[1], rtol=0, atol=1e-6)


def test_a_drop_below_the_tolerance_counts_as_zero(inputs):
    model, images, labels, _ = inputs
    maps = occlusion_maps(model, images, labels, size=K, stride=STRIDE, feature_layer=None)
    assert maps.rtol == zero_rtol(torch.float32) == 1e-4
    assert zero_rtol(torch.bfloat16) == pytest.approx(8 * 2**-7)
    maps.prob = maps.prob.clone()
    base = maps.base_prob[0].item()
    maps.prob[0, 0, 0] = base - 0.9e-4 * base  # rounding-sized: zero
    maps.prob[0, 0, 1] = base - 1.1e-4 * base  # beyond the tolerance: kept
    assert maps.drop()[0, 0, 0] == 0
    assert maps.drop()[0, 0, 1] == pytest.approx(1.1e-4 * base, rel=1e-3)
