"""The model-randomisation sanity check: rank correlation, the cascade, the callbacks' report."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from tests.test_paper_callbacks import make_probe, run
from zflight.analysis.attribution import gradcam, saliency
from zflight.analysis.sanity import (
    average_ranks,
    cascading_randomisation,
    layers_top_down,
    spearman,
)
from zflight.callbacks.heatmaps import HeatMaps
from zflight.models import zfnet


def test_spearman_closed_forms_and_ties():
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(spearman(x, 2 * x.exp() + 1), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(spearman(x, -x), -torch.ones(3, dtype=torch.float64))
    a, b = torch.tensor([[1.0, 2.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert average_ranks(a).tolist() == [[0.0, 1.5, 1.5, 3.0]]
    assert spearman(a, b).item() == pytest.approx(4.5 / math.sqrt(4.5 * 5.0))
    # values equal but for rounding tie, and a constant map has no order to compare
    noisy = torch.tensor([[1.0, 1.0 + 1e-9, 1.0 - 1e-9, 2.0]])
    assert average_ranks(noisy).tolist() == [[1.0, 1.0, 1.0, 3.0]]
    assert spearman(torch.zeros(1, 4), b).item() == 0.0


class ThreeLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))


def test_layers_are_randomised_cumulatively_from_the_top():
    torch.manual_seed(0)
    start, trained = ThreeLayers(), ThreeLayers()
    before = copy.deepcopy(trained.state_dict())

    def attribute(net: nn.Module) -> dict[str, torch.Tensor]:
        return {name: m.weight.detach().clone()[None] for name, m in net.named_children()}

    depths = cascading_randomisation(trained, start.state_dict(), attribute)
    assert [d for d, _ in depths] == ["trained", "c", "b", "a"]
    for k, (_, maps) in enumerate(depths):
        for j, name in enumerate(["c", "b", "a"]):
            source = start if j < k else trained  # the top k layers are the start's
            assert torch.equal(maps[name][0], getattr(source, name).weight)
    for key, value in trained.state_dict().items():
        assert torch.equal(value, before[key])  # the model itself is untouched
    names = [short for short, _ in layers_top_down(zfnet(num_classes=4, width=0.125))]
    assert names == ["fc8", "fc7", "fc6", "conv5", "conv4", "conv3", "conv2", "conv1"]


def test_heatmaps_report_the_check_against_the_start_network():
    torch.manual_seed(0)
    start = zfnet(num_classes=4, width=0.125, head_pool=2)
    torch.manual_seed(1)
    trained = zfnet(num_classes=4, width=0.125, head_pool=2)
    probe = make_probe()
    cb = HeatMaps(sanity_probes=3, faithfulness_every_n_epochs=0)
    cb.capture_start(start)
    result = run(cb, trained, probe)
    fig = result.figures["sanity"]
    assert fig.image.dtype.name == "uint8" and fig.image.std() > 0
    assert "Spearman rank correlation" in fig.caption and "fc8" in fig.caption
    # with every layer randomised the network is the start network itself
    x, y = probe.images[:3], probe.labels[:3]
    for prefix, method in (
        ("", lambda net: gradcam(net, x, net.features.relu5, y)),
        ("saliency_", lambda net: saliency(net, x, y)),
    ):
        expected = spearman(method(trained.eval()), method(start.eval())).mean().item()
        assert result.scalars[f"{prefix}sanity_spearman"] == pytest.approx(expected, abs=1e-6)
    state = cb.state_dict()
    assert set(state["start_weights"]) == set(start.state_dict())
    fresh = HeatMaps()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.start_weights["features.conv1.weight"], start.features.conv1.weight)


def test_maps_that_do_not_change_survive_and_say_so_once():
    torch.manual_seed(0)
    net = zfnet(num_classes=4, width=0.125, head_pool=2)
    cb = HeatMaps(sanity_probes=2, faithfulness_every_n_epochs=0)
    cb.capture_start(net)  # "randomised" to the very same weights: nothing changes
    with pytest.warns(UserWarning, match="saliency maps survive randomisation") as seen:
        result = run(cb, net, make_probe())
        run(cb, net, make_probe())
    said = [str(w.message) for w in seen if "survive" in str(w.message)]
    assert len(said) == 2  # Grad-CAM and saliency, each once over two analyses
    assert result.scalars["sanity_spearman"] == pytest.approx(1.0)
    assert "Grad-CAM maps survive randomisation: rank correlation 1.00" in (
        result.figures["sanity"].caption
    )
