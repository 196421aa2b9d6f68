"""CaptumAttribution: any Captum method by name, its maps equal to Captum's called directly,
arguments checked against Captum's signatures, a clear line when Captum is missing."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.test_paper_callbacks import make_probe, run
from zflight.callbacks.captum import CaptumAttribution, CaptumMissing
from zflight.config import ConfigError
from zflight.models import zfnet
from zflight.run.targets import instantiate

captum_attr = pytest.importorskip("captum.attr", reason="Captum is an optional extra")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return zfnet(num_classes=4, width=0.125, head_pool=2).eval()


def test_maps_equal_captum_called_directly(model):
    probe = make_probe()
    x, y = probe.images, probe.labels
    ig = CaptumAttribution(method="IntegratedGradients", attribute_args={"n_steps": 8})
    direct = captum_attr.IntegratedGradients(model).attribute(x, target=y, n_steps=8)
    torch.testing.assert_close(ig.attribute(model, x, y), direct.sum(1))
    cam = CaptumAttribution(method="LayerGradCam", layer="conv5", reduce="sum")
    layer = captum_attr.LayerGradCam(model, model.features.conv5).attribute(x, target=y)
    expected = captum_attr.LayerAttribution.interpolate(layer, x.shape[-2:], "bilinear")[:, 0]
    torch.testing.assert_close(cam.attribute(model, x, y), expected)
    occ = CaptumAttribution(
        method="Occlusion",
        attribute_args={"sliding_window_shapes": [3, 8, 8], "strides": [3, 8, 8]},
        reduce="max_abs",
    )
    direct = captum_attr.Occlusion(model).attribute(
        x, target=y, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8)
    )
    torch.testing.assert_close(occ.attribute(model, x, y), direct.abs().amax(1))
    for p in model.parameters():
        assert p.grad is None and p.requires_grad  # weights untouched, flags restored


def test_analysis_scores_checks_and_figure(model):
    probe = make_probe()
    cb = CaptumAttribution(method="Saliency", faithfulness_steps=4)
    assert cb.name == "saliency" and cb.grad
    cb.capture_start(zfnet(num_classes=4, width=0.125, head_pool=2))
    result = run(cb, model, probe)
    assert set(result.figures) == {"maps", "faithfulness", "sanity"}
    for key in ("pointing_game", "mass_in_mask"):
        s = result.scalars
        best = max(s[f"{key}_baseline_centre"], s[f"{key}_baseline_random"])
        assert s[f"{key}_margin"] == pytest.approx(s[key] - best)
    assert {"deletion_auc", "insertion_auc_baseline_random", "sanity_spearman"} <= set(
        result.scalars
    )
    caption = result.figures["maps"].caption
    assert caption.startswith("Captum Saliency") and "Saliency: pointing game" in caption
    assert result.figures["maps"].image.dtype.name == "uint8"


def test_arguments_are_checked_against_captums_signatures():
    with pytest.raises(
        ValueError, match=r"attribute_args.n_step: .*did you mean attribute_args.n_steps"
    ):
        CaptumAttribution(method="IntegratedGradients", attribute_args={"n_step": 4})
    with pytest.raises(ValueError, match="needs sliding_window_shapes"):
        CaptumAttribution(method="Occlusion")
    with pytest.raises(ValueError, match="did you mean IntegratedGradients"):
        CaptumAttribution(method="IntegratedGradient")
    with pytest.raises(ValueError, match="layer: LayerGradCam explains a layer"):
        CaptumAttribution(method="LayerGradCam")
    with pytest.raises(ValueError, match="reduce must be one of"):
        CaptumAttribution(reduce="mean")
    spec = {"_target_": "zflight.callbacks.captum.CaptumAttribution", "method": "Saliency"}
    assert instantiate(spec, "callbacks.attr").name == "saliency"
    with pytest.raises(ConfigError, match=r"^callbacks.attr: init_args.multiply: "):
        instantiate(
            {**spec, "method": "InputXGradient", "init_args": {"multiply": 1}}, "callbacks.attr"
        )


def test_a_missing_captum_says_how_to_install_it(monkeypatch):
    for name in [m for m in sys.modules if m == "captum" or m.startswith("captum.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "captum", None)  # import captum now fails
    with pytest.raises(CaptumMissing, match=r"pip install 'zflight\[captum\]'"):
        CaptumAttribution(method="Saliency")
    spec = {"_target_": "zflight.callbacks.captum.CaptumAttribution"}
    with pytest.raises(ConfigError, match=r"not installed: pip install 'zflight\[captum\]'"):
        instantiate(spec, "callbacks.attr")
