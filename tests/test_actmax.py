"""Activation maximisation: a linear filter's optimum, batching, early stop, no side effects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zflight.analysis.actmax import activation_maximization, fourier_scale, total_variation
from zflight.models import zfnet


@pytest.mark.parametrize("param", ["pixel", "fourier"])
def test_linear_filter_converges_to_its_own_pattern(param):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 1, 7, bias=False)
    w = conv.weight[0].detach()
    l2 = 5.0
    result = activation_maximization(
        nn.Sequential(conv), [(conv, 0)], (7, 7), steps=100, param=param, jitter=0, tv=0.0, l2=l2
    )
    x = result.images[0]
    # max <w, x> - l2 * mean(x^2) over x is reached at x = n w / (2 l2), n = 3 * 7 * 7.
    optimum = w.numel() * w / (2 * l2)
    assert torch.cosine_similarity(x.flatten(), w.flatten(), dim=0) > 0.999
    torch.testing.assert_close(x, optimum, rtol=0, atol=1e-2 * optimum.abs().max().item())
    torch.testing.assert_close(result.activations, (w * x).sum().view(1))


def test_activations_grow_for_every_unit():
    torch.manual_seed(0)
    model = zfnet(num_classes=4, width=0.125, head_pool=2)
    targets = [(model.features.conv2, 1), (model.features.conv4, 5), (model.classifier.fc8, 2)]
    before = activation_maximization(model, targets, (64, 64), steps=0).activations
    after = activation_maximization(model, targets, (64, 64), steps=12).activations
    assert (after > before + 0.1).all()


def test_batched_targets_match_separate_runs():
    torch.manual_seed(0)
    model = zfnet(num_classes=4, width=0.125, head_pool=2)
    conv3 = model.features.conv3
    together = activation_maximization(model, [(conv3, 3), (conv3, 0)], (64, 64), steps=6, jitter=2)
    alone = activation_maximization(model, [(conv3, 3)], (64, 64), steps=6, jitter=2)
    torch.testing.assert_close(together.images[:1], alone.images, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together.images[0], together.images[1])


def test_forward_stops_after_the_last_target_layer():
    class Explode(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("ran past the target layer")

    conv = nn.Conv2d(3, 2, 3)
    result = activation_maximization(
        nn.Sequential(conv, Explode()),
        [(conv, 0), (conv, 1)],
        (8, 8),
        steps=3,
        param="pixel",
        blur_every=1,
    )
    assert result.images.shape == (2, 3, 8, 8)


def test_leaves_weights_grads_modes_and_rng_alone():
    torch.manual_seed(0)
    model = zfnet(num_classes=4, width=0.125, head_pool=2).train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    marker = torch.full_like(model.classifier.fc8.weight, -2.0)
    model.classifier.fc8.weight.grad = marker.clone()
    rng = torch.get_rng_state()
    targets = [(model.features.conv1, 0), (model.classifier.fc8, 1)]
    first = activation_maximization(model, targets, (64, 64), steps=3)
    again = activation_maximization(model, targets, (64, 64), steps=3)
    torch.testing.assert_close(first.images, again.images)  # seeded, and dropout off inside
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(model.classifier.fc8.weight.grad, marker)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "classifier.fc8.weight")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_total_variation_of_stripes():
    x = torch.zeros(1, 3, 4, 6)
    x[..., ::2] = 1.0  # vertical stripes: every horizontal neighbour differs by 1, vertical by 0
    torch.testing.assert_close(total_variation(x), torch.tensor([1.0]))


def test_fourier_scale_is_one_over_frequency():
    s = fourier_scale((8, 8))
    assert s.shape == (8, 5)
    torch.testing.assert_close(s[0, 0], torch.tensor(8.0))  # DC clamped to the lowest frequency
    torch.testing.assert_close(s[0, 4], torch.tensor(2.0))  # f = 0.5 cycles per pixel
    torch.testing.assert_close(s[2, 0], torch.tensor(4.0))  # f = 0.25


BOUNDS = ((-1.0, -2.0, -0.5), (2.0, 1.0, 0.5))


def red_minus_green(squash: bool):
    """30 pixel-space steps maximising red minus green (a 1x1 conv) inside ``BOUNDS``."""
    conv = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1))
    return activation_maximization(
        nn.Sequential(conv),
        [(conv, 0)],
        (6, 6),
        steps=30,
        lr=0.2,
        bounds=BOUNDS,
        l2=0.0,
        tv=0.0,
        param="pixel",
        init="gray",
        squash=squash,
    )


def test_bounds_keep_the_image_valid_and_are_approached():
    low, high = BOUNDS
    result = red_minus_green(squash=False)
    x = result.images[0]
    for c in range(3):
        assert low[c] <= x[c].min() and x[c].max() <= high[c]
    # The unit reads +channel 0 - channel 1: both are driven to their bounds, channel 2 stays put.
    torch.testing.assert_close(x[0], torch.full((6, 6), high[0]))
    torch.testing.assert_close(x[1], torch.full((6, 6), low[1]))
    torch.testing.assert_close(x[2], torch.zeros(6, 6))


def _local_detector() -> tuple[nn.Sequential, nn.Conv2d]:
    """A unit that fires on one 3x3 pattern and is negative on a blank image (bias -1), after a
    ReLU layer that is silent on a blank image too: ascent from a near-blank start must both wake
    the layer below and find the pattern."""
    torch.manual_seed(3)
    first = nn.Conv2d(3, 4, 3, padding=1)
    second = nn.Conv2d(4, 2, 3, stride=2)
    with torch.no_grad():
        first.bias.fill_(-0.2)
        second.bias.fill_(-1.0)
    return nn.Sequential(first, nn.ReLU(), second), second


def test_a_unit_negative_on_a_blank_image_becomes_positive():
    model, unit = _local_detector()
    targets = [(unit, 0), (unit, 1)]
    blank = activation_maximization(model, targets, (16, 16), steps=0, init="gray")
    assert (blank.activations < 0).all()
    found = activation_maximization(model, targets, (16, 16), steps=40, lr=0.1)
    assert (found.activations > 0).all()


def test_spatial_reductions_of_a_constructed_map():
    class Fixed(nn.Module):
        """Puts out one known 3x3 map whatever the input."""

        def __init__(self) -> None:
            super().__init__()
            self.map = nn.Parameter(
                torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 0.5, -1.0], [-1.0, -1.0, 4.0]])
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.map.expand(x.shape[0], 1, 3, 3) + 0 * x.mean()

    layer = Fixed()
    for spatial, value in (("max", 4.0), ("centre", 0.5), ("mean", -2.5 / 9)):
        result = activation_maximization(
            layer, [(layer, 0)], (3, 3), steps=0, spatial=spatial, param="pixel"
        )
        torch.testing.assert_close(result.activations, torch.tensor([value]))
    with pytest.raises(ValueError, match="spatial"):
        activation_maximization(layer, [(layer, 0)], (3, 3), steps=0, spatial="median")


def test_squash_keeps_pixels_strictly_inside_the_bounds_and_moves_them_the_right_way():
    low, high = BOUNDS
    result = red_minus_green(squash=True)
    x = result.images[0]
    for c in range(3):
        assert low[c] < x[c].min() and x[c].max() < high[c]  # a sigmoid never reaches a bound
    mid = [(a + b) / 2 for a, b in zip(low, high)]
    # channel 0 is pushed up, channel 1 down, channel 2 (unread) stays at the middle
    assert (x[0] > mid[0] + 1.0).all() and (x[1] < mid[1] - 1.0).all()
    torch.testing.assert_close(x[2], torch.full((6, 6), mid[2]))


def test_colour_decorrelation_mixes_channels_by_the_natural_image_matrix():
    from zflight.analysis.actmax import COLOUR_CORRELATION

    assert COLOUR_CORRELATION.norm(dim=0).max() == pytest.approx(1.0)
    conv = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
    plain = activation_maximization(
        nn.Sequential(conv), [(conv, 0)], (4, 4), steps=0, param="pixel", init_std=1.0
    )
    mixed = activation_maximization(
        nn.Sequential(conv),
        [(conv, 0)],
        (4, 4),
        steps=0,
        param="pixel",
        init_std=1.0,
        decorrelate=True,
    )
    # the same start (seeded), mixed into RGB by the matrix
    expected = torch.einsum("ij,jhw->ihw", COLOUR_CORRELATION, plain.images[0])
    torch.testing.assert_close(mixed.images[0], expected)


def test_robust_transform_shifts_scales_and_rotates_with_the_mean_at_the_borders():
    from zflight.analysis.actmax import robust_transform

    x = torch.zeros(2, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(robust_transform(x, g, 4), x)  # the mean stays the mean
    ones = torch.ones(1, 1, 32, 32)
    seen = set()
    for seed in range(6):
        out = robust_transform(ones, torch.Generator().manual_seed(seed), 4)
        assert out.shape == ones.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0001
        assert out[0, 0, 12:20, 12:20].min() > 0.99  # the middle stays inside the picture
        seen.add(round(float(out.mean()), 4))
    assert len(seen) > 1, "each call draws a new transformation"
    a = robust_transform(ones, torch.Generator().manual_seed(7), 4)
    b = robust_transform(ones, torch.Generator().manual_seed(7), 4)
    assert torch.equal(a, b)
