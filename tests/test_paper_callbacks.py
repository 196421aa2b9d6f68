"""HeatMaps, ActivationMaximization, Invariance: analyze() on a tiny ZFNet and a hand-made probe."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch

from zflight.analysis.attribution import gradcam, saliency
from zflight.analysis.invariance import invariance_curves
from zflight.analysis.localization import mass_in_mask, pointing_game
from zflight.callbacks.actmax import ActivationMaximization
from zflight.callbacks.base import isolated
from zflight.callbacks.heatmaps import HeatMaps, misclassified_rows, rectified_layer
from zflight.callbacks.invariance import Invariance, plot_curves
from zflight.callbacks.results import Probe
from zflight.models import zfnet

CLASSES = ["disc", "bar", "dot", "ring"]


class Context:
    """The parts of AnalysisContext the callbacks use, for one process."""

    rank, world_size, epoch, device = 0, 1, 0, torch.device("cpu")

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return zfnet(num_classes=len(CLASSES), width=0.125, head_pool=2)


def make_probe(masks: bool = True, n: int = 3) -> Probe:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 64, 64, generator=g)
    object_masks = torch.zeros(n, 64, 64, dtype=torch.bool)
    object_masks[:, 16:40, 20:44] = True
    return Probe(
        images,
        torch.arange(n) % len(CLASSES),
        object_masks if masks else None,
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        CLASSES,
    )


def run(callback, model, probe):
    """analyze() as the base runs it: isolated, eval mode, the callback's grad context."""
    with isolated(model), torch.enable_grad() if callback.grad else torch.no_grad():
        return callback.analyze(model, probe, Context())


def assert_picture(a: np.ndarray) -> None:
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and a.std() > 0


def test_heatmaps_figure_and_scores_match_the_analysis(model):
    probe = make_probe()
    cb = HeatMaps(num_rows=2)
    assert cb.name == "heatmaps" and cb.grad
    result = run(cb, model, probe)
    # no start weights: no sanity check; an untrained net misclassifies
    assert (
        {"maps", "faithfulness"} <= set(result.figures) <= {"maps", "misclassified", "faithfulness"}
    )
    fig = result.figures["maps"]
    assert_picture(fig.image)
    assert 2 * 128 < fig.image.shape[0] < 3 * 128 + 80  # 2 rows of 128 px tiles and a title
    assert fig.image.shape[1] > 4 * 128  # 4 panels
    assert "Grad-CAM at conv5" in fig.caption and "misclassified" in fig.caption
    model.eval()
    cam = gradcam(model, probe.images, model.features.relu5, probe.labels)
    sal = saliency(model, probe.images, probe.labels)
    expected = {
        "pointing_game": pointing_game(cam, probe.masks).float().mean().item(),
        "mass_in_mask": mass_in_mask(cam, probe.masks).mean().item(),
        "saliency_pointing_game": pointing_game(sal, probe.masks).float().mean().item(),
        "saliency_mass_in_mask": mass_in_mask(sal, probe.masks).mean().item(),
    }
    assert {k: result.scalars[k] for k in expected} == pytest.approx(expected, abs=1e-6)
    assert 0 < expected["saliency_mass_in_mask"] < 1
    for prefix in ("", "saliency_"):  # each score beside both baselines, and its margin
        for score in ("pointing_game", "mass_in_mask"):
            s = {
                k: result.scalars[f"{prefix}{score}{k}"]
                for k in ("", "_baseline_centre", "_baseline_random", "_margin")
            }
            best = max(s["_baseline_centre"], s["_baseline_random"])
            assert s["_margin"] == pytest.approx(s[""] - best)
    assert "Grad-CAM: pointing game" in fig.caption and "saliency: pointing game" in fig.caption


def test_misclassified_rows_are_the_wrong_images_in_order():
    wrong = torch.tensor([False, False, True, False, True, False, True])
    assert misclassified_rows(wrong, 8) == [2, 4, 6]  # probes 0-3, then the score set
    assert misclassified_rows(wrong, 2) == [2, 4]
    assert misclassified_rows(torch.zeros(3, dtype=torch.bool), 8) == []


def test_heatmaps_keep_the_probes_in_order_and_show_the_misclassified_apart(model):
    always_disc = copy.deepcopy(model)
    with torch.no_grad():
        always_disc.classifier.fc8.bias[0] = 1e4  # class 0 ("disc") wins for every image
    probe = make_probe(n=2)
    probe.labels = torch.tensor([0, 2])  # probe 0 is right, probe 1 ("dot") is wrong
    figures = run(HeatMaps(), always_disc, probe).figures
    fig = figures["maps"]
    red = (fig.image == np.array([200, 40, 40], np.uint8)).all(-1).nonzero()
    green = (fig.image == np.array([40, 160, 40], np.uint8)).all(-1).nonzero()
    # the probes in their own order every epoch: the right one (0) above the wrong one (1)
    assert len(red[0]) and len(green[0]) and green[0].max() < red[0].min()
    assert "the 2 probe images (1 misclassified; the same images every epoch)" in fig.caption
    wrong = figures["misclassified"]
    assert (wrong.image == np.array([200, 40, 40], np.uint8)).all(-1).any()
    assert not (wrong.image == np.array([40, 160, 40], np.uint8)).all(-1).any()
    assert "misclassified validation images" in wrong.caption


def test_heatmaps_without_masks_log_no_scores(model):
    result = run(HeatMaps(faithfulness_every_n_epochs=0), model, make_probe(masks=False))
    assert result.scalars == {} and "maps" in result.figures


def test_rectified_layer_picks_the_relu_after_a_conv(model):
    assert rectified_layer(model, "conv5") is model.features.relu5
    assert rectified_layer(model, "conv3") is model.features.relu3
    assert rectified_layer(model, "pool5") is model.features.pool5


def test_actmax_grids_units_and_scalars(model):
    cb = ActivationMaximization(
        layers=["conv1", "conv4", "fc8"],
        units_per_layer=4,
        units={"conv4": [5, 1]},
        steps=3,
        upscale=2,
    )
    assert cb.name == "actmax" and cb.grad
    # conv1 has 12 channels: 4 evenly spaced are round(0, 11/3, 22/3, 11); fc8 has only 4 classes.
    assert cb.chosen_units(model) == {"conv1": [0, 4, 7, 11], "conv4": [5, 1], "fc8": [0, 1, 2, 3]}
    result = run(cb, model, make_probe())
    assert set(result.figures) == {"conv1", "conv4", "fc8"}
    for name, count in (("conv1", 4), ("conv4", 2), ("fc8", 4)):
        fig = result.figures[name]
        assert_picture(fig.image)
        assert fig.image.shape[1] >= count * 128  # tiles are enlarged to at least 128 px
        assert fig.caption.startswith(f"{name}: inputs that maximise {count} units")
    assert set(result.scalars) == {
        f"{name}/{what}"
        for name in ("conv1", "conv4", "fc8")
        for what in ("activation", "positive_share")
    }
    assert all(np.isfinite(v) for v in result.scalars.values())


def test_actmax_marks_a_unit_that_cannot_become_positive(model):
    dead = copy.deepcopy(model)
    with torch.no_grad():
        dead.features.conv4.weight[1].zero_()
        dead.features.conv4.bias[1] = -1.0  # unit 1 puts out -1 whatever the input
    cb = ActivationMaximization(layers=["conv4"], units={"conv4": [1]}, steps=2)
    result = run(cb, dead, make_probe())
    assert result.scalars["conv4/activation"] == pytest.approx(-1.0)
    assert result.scalars["conv4/positive_share"] == 0.0
    fig = result.figures["conv4"]
    red = (fig.image == np.array([210, 30, 30], np.uint8)).all(-1)
    assert red.sum() > 4 * 128 * 3  # a 3 px frame around the 128 px tile
    assert "0 of 1 reached" in fig.caption and "red frames" in fig.caption


def test_invariance_scalars_are_the_areas_of_the_curves(model):
    probe = make_probe()
    cb = Invariance(layers=["conv1", "fc7"], num_images=2, scale=None, num_values=5)
    assert cb.transforms == {
        "translate": [-0.25, -0.125, 0.0, 0.125, 0.25],
        "rotate": [0.0, 90.0, 180.0, 270.0, 360.0],
    }
    result = run(cb, model, probe)
    assert set(result.figures) == {"curves", "examples"}
    for fig in result.figures.values():
        assert_picture(fig.image)
    assert "conv1, fc7 features" in result.figures["curves"].caption
    assert "translate, rotate" in result.figures["examples"].caption
    model.eval()
    layers = {"conv1": model.features.conv1, "fc7": model.classifier.fc7}
    curves = invariance_curves(model, probe.images[:2], probe.labels[:2], layers, cb.transforms)
    expected = {}
    for c in curves:
        for layer in layers:
            expected[f"{c.kind}/{layer}_auc"] = c.area(c.distances[layer]).mean().item()
        expected[f"{c.kind}/p_true_auc"] = c.area(c.p_true).mean().item()
    assert result.scalars == pytest.approx(expected, rel=1e-5)
    assert result.scalars["translate/conv1_auc"] > 0.1
    assert result.figures["examples"].image.shape[1] > 5 * 64  # 5 values per row
    # the examples depend on the probe set alone: logged once, not again every epoch
    assert set(run(cb, model, probe).figures) == {"curves"}


def test_invariance_legends_stand_beside_the_plots_and_name_each_image(model):
    from matplotlib.transforms import Bbox

    from zflight.callbacks.invariance import curves_figure

    probe = make_probe()
    layers = {"conv1": model.features.conv1, "fc7": model.classifier.fc7}
    kinds = {"translate": [-0.2, 0.0, 0.2], "rotate": [0.0, 90.0]}
    curves = invariance_curves(model, probe.images[:2], probe.labels[:2], layers, kinds)
    fig = curves_figure(curves, ["#0 square", "#1 square"])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 2
    texts = [t.get_text() for t in legends[1].get_texts()]
    assert texts == ["#0 square", "#1 square"]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not Bbox.intersection(box, ax.get_window_extent(renderer)), "a legend on a plot"
        assert box.x1 <= fig.bbox.x1, "a legend cut off at the right edge"


def test_invariance_plot_has_a_panel_per_layer_and_transform(model):
    probe = make_probe()
    layers = {"conv1": model.features.conv1}
    curves = invariance_curves(
        model, probe.images, probe.labels, layers, {"scale": [1.0, 1.5, 2.0]}
    )
    one = plot_curves(curves, CLASSES, dpi=50)
    two = plot_curves(curves * 2, CLASSES, dpi=50)
    assert_picture(one)
    # a column of 3.4 inches per transformation, beside one legend column
    assert two.shape[0] == one.shape[0] and two.shape[1] - one.shape[1] == 3.4 * 50


def test_invariance_needs_a_transform():
    with pytest.raises(ValueError, match="at least one"):
        Invariance(translate=None, scale=None, rotate=None)


@pytest.mark.slow
def test_training_logs_all_three_and_keeps_the_weights(tmp_path):
    from tests.conftest import tiny_overrides
    from zflight.train import train

    targets = {
        "hm": "heatmaps.HeatMaps",
        "am": "actmax.ActivationMaximization",
        "inv": "invariance.Invariance",
    }
    extra = [f"callbacks.{k}._target_=zflight.callbacks.{v}" for k, v in targets.items()]
    extra += [f"callbacks.{k}.strict=true" for k in targets] + [
        "callbacks.am.steps=4",
        "callbacks.inv.num_values=5",
    ]
    with_cbs = train(tiny_overrides(tmp_path / "with", *extra))["run_dir"]
    without = train(tiny_overrides(tmp_path / "without"))["run_dir"]
    pngs = {str(p.relative_to(with_cbs / "viz")) for p in (with_cbs / "viz").rglob("*.png")}
    assert {
        "heatmaps/maps/epoch_0000.png",
        "heatmaps/maps/epoch_0001.png",
        "actmax/fc8/epoch_0001.png",
        "invariance/curves/epoch_0001.png",
    } <= pngs
    assert "actmax/fc8/epoch_0000.png" not in pngs  # every 2 epochs by default
    a = torch.load(with_cbs / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(without / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)
