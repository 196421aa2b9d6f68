"""Grad-CAM and saliency against closed forms on a constructed network, and against Captum."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zflight.analysis.attribution import frozen, gradcam, saliency
from zflight.analysis.localization import mass_in_mask, pointing_game
from zflight.models import zfnet

H = W = 16


def evidence_net() -> nn.Sequential:
    """Class k's logit is the mean of ReLU(input channel k): its evidence is where channel k > 0."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    fc = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = conv.weight[1, 1] = 1.0
        fc.weight.copy_(torch.eye(2))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)


def evidence_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Channel 0 positive only in region A, channel 1 only in region B; negative clutter around."""
    g = torch.Generator().manual_seed(0)
    x = -torch.rand(2, 3, H, W, generator=g)
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    masks[0, 2:6, 3:8] = True
    masks[1, 9:14, 8:13] = True
    x[:, 0][masks[0].expand(2, H, W)] = torch.rand(2, 4 * 5, generator=g).flatten() + 0.5
    x[:, 1][masks[1].expand(2, H, W)] = torch.rand(2, 5 * 5, generator=g).flatten() + 0.5
    return x, masks


def test_gradcam_equals_closed_form_and_points_at_the_evidence():
    net, (x, masks) = evidence_net(), evidence_images()
    cams = gradcam(net, x, net[1], torch.tensor([[0, 1], [0, 1]]))
    assert cams.shape == (2, 2, H, W)
    # d logit_k / dA = 1/(HW) on channel k, 0 elsewhere, so the CAM is ReLU(x_k) / (HW).
    for k in range(2):
        torch.testing.assert_close(cams[:, k], x[:, k].clamp_min(0) / (H * W))
        region = masks[k].expand(2, H, W)
        assert pointing_game(cams[:, k], region).all()
        torch.testing.assert_close(mass_in_mask(cams[:, k], region), torch.ones(2))
        assert (cams[:, k][~region] == 0).all()


def test_gradcam_single_targets_match_the_multi_target_call():
    net, (x, _) = evidence_net(), evidence_images()
    both = gradcam(net, x, net[1], torch.tensor([[0, 1], [1, 0]]))
    torch.testing.assert_close(gradcam(net, x, net[1], torch.tensor([0, 1])), both[:, 0])
    torch.testing.assert_close(gradcam(net, x, net[1], torch.tensor([1, 0])), both[:, 1])


def test_saliency_equals_closed_form():
    net, (x, masks) = evidence_net(), evidence_images()
    sal = saliency(net, x, torch.tensor([0, 1]))
    # d logit_k / dx_k = 1/(HW) where x_k > 0 (ReLU open), 0 elsewhere; other channels get 0.
    expected = torch.stack([masks[0], masks[1]]).float() / (H * W)
    torch.testing.assert_close(sal, expected)


def test_gradcam_and_saliency_match_captum_on_zfnet():
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = zfnet(num_classes=5, width=0.125, head_pool=2).eval()
    x = torch.randn(3, 3, 64, 64)
    target = torch.tensor([0, 3, 4])
    ours = gradcam(model, x, model.features.relu5, target, upsample=False)
    ref = captum_attr.LayerGradCam(model, model.features.relu5).attribute(
        x, target=target, relu_attributions=True
    )
    torch.testing.assert_close(ours, ref[:, 0], rtol=1e-4, atol=1e-6)
    big = gradcam(model, x, model.features.relu5, target)
    assert big.shape == (3, 64, 64)
    torch.testing.assert_close(
        big,
        captum_attr.LayerAttribution.interpolate(ref, (64, 64), "bilinear")[:, 0],
        rtol=1e-4,
        atol=1e-6,
    )
    sal = (
        captum_attr.Saliency(model)
        .attribute(x.clone().requires_grad_(True), target=target, abs=True)
        .amax(1)
    )
    torch.testing.assert_close(saliency(model, x, target), sal)


def test_attribution_leaves_weights_grads_modes_and_rng_alone():
    torch.manual_seed(0)
    model = zfnet(num_classes=5, width=0.125, head_pool=2).train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    marker = torch.full_like(model.features.conv1.weight, 3.0)
    model.features.conv1.weight.grad = marker.clone()
    x = torch.randn(2, 3, 64, 64)
    rng = torch.get_rng_state()
    first = gradcam(model, x, model.features.relu5, torch.tensor([1, 2]))
    again = gradcam(model, x, model.features.relu5, torch.tensor([1, 2]))
    saliency(model, x, torch.tensor([[1, 2], [0, 4]]))
    torch.testing.assert_close(first, again)  # dropout off: eval mode inside
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(model.features.conv1.weight.grad, marker)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "features.conv1.weight")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_frozen_restores_after_an_error():
    model = zfnet(num_classes=3, width=0.125, head_pool=2).train()
    with pytest.raises(RuntimeError), frozen(model):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        raise RuntimeError("boom")
    assert model.training and all(p.requires_grad for p in model.parameters())
