"""Filter verdicts on a default-sized net that learns: conv2 learns while moving little, and the
verdicts say so; the same conv2 put back to its start is untrained."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from zflight.analysis.deconvnet import Deconvnet
from zflight.analysis.filters import OK, UNTRAINED, filter_health
from zflight.data.shapes import ShapesDataset
from zflight.models import create_model


@pytest.mark.slow
def test_conv2_of_a_learning_net_is_ok_while_its_projections_change_and_untrained_when_frozen():
    torch.manual_seed(0)
    # the default net: ZFNet at width 0.25, Kaiming, conv1 starting at N(0, 0.01^2)
    model = create_model(
        "zfnet", num_classes=8, width=0.25, head_pool=2, dropout=0.0, conv1_std=0.01
    )
    data = ShapesDataset(96, seed=3)
    images = (data.images.float() - data.mean) / data.std
    labels = data.labels
    start = copy.deepcopy(model)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    first = last = 0.0
    for step in range(120):  # the default optimiser, on one batch: it learns (memorises) it
        loss = F.cross_entropy(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first, last = (loss.item() if step == 0 else first), loss.item()
    assert last < 0.5 * first
    w2, w0 = model.features.conv2.weight, start.features.conv2.weight
    report = filter_health(w2, 2, step=4, initial=w0)
    # conv2 stays close to its Kaiming start: "cosine to the start above 0.5" calls it untrained
    assert float(report.cos_start.min()) > 0.5
    assert (report.status == OK).float().mean() >= 0.75
    # ... while what its units respond to has changed: the deconvnet projections of the same
    # units at the same positions, with the learned and the start trunk, differ
    model.eval()
    start.eval()
    trunk, then = model.features[:5], start.features[:5]
    with torch.no_grad():
        acts = trunk(images[:8])
    channels = acts.flatten(2).amax(2).argmax(1)
    positions = acts.flatten(2)[torch.arange(8), channels].argmax(1)
    now = Deconvnet(trunk).project(images[:8], "conv2", channels, positions)
    before = Deconvnet(then).project(images[:8], "conv2", channels, positions)
    assert float(F.cosine_similarity(now.flatten(1), before.flatten(1), dim=1).median()) < 0.9
    # conv2 frozen at its start (or only rescaled): untrained throughout
    frozen = filter_health(0.9 * w0, 2, step=4, initial=w0)
    assert frozen.status.tolist() == [UNTRAINED] * len(w0)
