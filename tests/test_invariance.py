"""Invariance curves: exact transforms, zero distance at the identity, monotone growth for a
feature that is not invariant, the area under a curve, and isolation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zflight.analysis.invariance import InvarianceCurve, invariance_curves, transform_images
from zflight.models import zfnet


def test_identity_values_reproduce_the_images():
    x = torch.randn(2, 3, 12, 10)
    for kind, value in (("translate", 0.0), ("scale", 1.0), ("rotate", 0.0), ("rotate", 360.0)):
        torch.testing.assert_close(transform_images(x, kind, [value])[0], x, atol=1e-5, rtol=0)


def test_right_angle_rotations_and_whole_pixel_shifts_are_exact():
    x = torch.randn(2, 3, 8, 8)
    moved = transform_images(x, "rotate", [90.0, 180.0])
    torch.testing.assert_close(moved[0], torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(moved[1], x.flip(-1, -2), atol=1e-5, rtol=0)
    down = transform_images(x, "translate", [3 / 8])[0]
    expected = torch.zeros_like(x)
    expected[..., 3:, :] = x[..., :5, :]
    torch.testing.assert_close(down, expected, atol=1e-5, rtol=0)


def test_scale_and_fractional_shift_of_a_ramp():
    # Bilinear interpolation is exact on a linear ramp, so inner pixels have closed forms.
    n = 16
    centre = (n - 1) / 2
    cols = (torch.arange(n, dtype=torch.float32) - centre).expand(1, 1, n, n)
    zoom = transform_images(cols, "scale", [2.0])[0, 0, 0]
    torch.testing.assert_close(zoom[4:12, 4:12], cols[0, 0, 4:12, 4:12] / 2)
    rows = cols.transpose(-1, -2)
    shifted = transform_images(rows, "translate", [0.5 / n])[0, 0, 0]
    torch.testing.assert_close(shifted[2:, :], rows[0, 0, 2:, :] - 0.5)


class BlobNet(nn.Module):
    """A non-invariant 'feature': the image itself; logits from a fixed linear read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.feature = nn.Identity()
        self.head = nn.Linear(3 * 32 * 32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature(x).flatten(1))


def blob(cy: float, cx: float, sigma: float = 4.0, size: int = 32) -> torch.Tensor:
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float32),
        torch.arange(size, dtype=torch.float32),
        indexing="ij",
    )
    g = torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    return g.expand(3, size, size)


def test_distance_is_zero_at_identity_and_grows_monotonically():
    torch.manual_seed(0)
    net = BlobNet()
    images = torch.stack([blob(15.5, 22.0), blob(9.0, 12.0)])
    labels = torch.tensor([0, 2])
    transforms = {
        "translate": torch.linspace(0, 0.25, 6).tolist(),
        "scale": torch.linspace(1.0, 1.8, 6).tolist(),
        "rotate": torch.linspace(0, 120, 7).tolist(),
    }
    curves = invariance_curves(net, images, labels, {"feature": net.feature}, transforms)
    assert [c.kind for c in curves] == ["translate", "scale", "rotate"]
    for curve in curves:
        d = curve.distances["feature"]
        assert d.shape == (len(curve.values), 2)
        torch.testing.assert_close(d[0], torch.zeros(2), atol=1e-5, rtol=0)
        assert (d[1:] - d[:-1] > 1e-4).all(), (curve.kind, d)
        # Independent formulation: the feature is the image, so the distance is ||T x - x|| / ||x||.
        moved = transform_images(images, curve.kind, curve.values.tolist())
        direct = (moved - images).flatten(2).norm(dim=2) / images.flatten(1).norm(dim=1)
        torch.testing.assert_close(d, direct, atol=1e-5, rtol=1e-4)
        p = net(moved.flatten(0, 1)).softmax(1).view(len(curve.values), 2, 3)
        torch.testing.assert_close(curve.p_true, p[:, [0, 1], labels])


def test_area_is_the_mean_height_over_the_range():
    values = torch.tensor([1.0, 1.5, 2.0, 3.0])
    curve = InvarianceCurve("scale", values, {}, torch.zeros(4, 1))
    torch.testing.assert_close(curve.area(torch.full((4, 2), 0.3)), torch.full((2,), 0.3))
    linear = ((values - 1) / 2).view(4, 1)  # rises from 0 to 1 over the range
    torch.testing.assert_close(curve.area(linear), torch.tensor([0.5]))
    shuffled = InvarianceCurve("scale", values.flip(0), {}, torch.zeros(4, 1))
    torch.testing.assert_close(shuffled.area(linear.flip(0)), torch.tensor([0.5]))


def test_unknown_transform_is_rejected():
    with pytest.raises(ValueError, match="translate"):
        transform_images(torch.zeros(1, 3, 4, 4), "shear", [0.1])


def test_leaves_weights_grads_modes_and_rng_alone():
    torch.manual_seed(0)
    model = zfnet(num_classes=4, width=0.125, head_pool=2).train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    marker = torch.ones_like(model.classifier.fc7.bias)
    model.classifier.fc7.bias.grad = marker.clone()
    x, labels = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    rng = torch.get_rng_state()
    layers = {"conv1": model.features.conv1, "fc7": model.classifier.fc7}
    first = invariance_curves(model, x, labels, layers, {"rotate": [0.0, 90.0]})
    again = invariance_curves(model, x, labels, layers, {"rotate": [0.0, 90.0]})
    torch.testing.assert_close(first[0].distances["fc7"], again[0].distances["fc7"])  # no dropout
    torch.testing.assert_close(first[0].distances["fc7"][0], torch.zeros(2), atol=1e-5, rtol=0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(model.classifier.fc7.bias.grad, marker)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "classifier.fc7.bias")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
