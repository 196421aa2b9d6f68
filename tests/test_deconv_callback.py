"""DeconvTopK and FeatureEvolution driven by hand: streamed hooks, a probe, a fake context."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from zflight.analysis.deconvnet import Deconvnet, receptive_field, resolve_layer
from zflight.analysis.images import (
    SILENT_GRAY,
    contrast,
    denormalize,
    marked_tile,
    resize,
    to_uint8,
)
from zflight.analysis.topk import crop, unit_boxes
from zflight.callbacks.base import VisualizationCallback
from zflight.callbacks.deconv import DeconvTopK, FeatureEvolution, channel_count, seeded_channels
from zflight.callbacks.results import Figure, Probe, VizResult
from zflight.models import zfnet

MEAN, STD = (0.5, 0.5, 0.5), (0.3, 0.3, 0.3)
LAYERS = ["conv1", "conv3", "conv5"]


class FakeContext:
    """What analyze needs from AnalysisContext, with an all_gather that counts its calls."""

    def __init__(self, epoch: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.epoch, self.rank, self.world_size = epoch, rank, world_size
        self.device = torch.device("cpu")
        self.gathers = 0

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        self.gathers += 1
        return t

    def autocast(self):
        return contextlib.nullcontext()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = zfnet(num_classes=4, width=0.125).eval()
    images = torch.randn(40, 3, 64, 64)
    probe = Probe(images[:6], torch.zeros(6, dtype=torch.long), None, MEAN, STD)
    return model, images, probe


def _stream(cb, model, images, batch: int = 16, labels=None, indexed: bool = False) -> None:
    """What the base does during a scheduled validation epoch (``indexed``: with the validation
    loader's batch indices, as a trainer's sampler gives them)."""
    cb.reset_stream()
    starts = range(0, len(images), batch)
    cb._batch_indices = (
        [list(range(i, min(i + batch, len(images)))) for i in starts] if indexed else None
    )
    handles = [m.register_forward_hook(fn) for m, fn in cb.stream_hooks(model)]
    labels = torch.zeros(0) if labels is None else labels
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            cb.current_batch, cb._batch_idx = (
                (images[i : i + batch], labels[i : i + batch]),
                i // batch,
            )
            model(images[i : i + batch])
    for h in handles:
        h.remove()
    cb.current_batch = None


def _one_shot(model, images, layer):
    """(C, N) strongest activation of every channel in every image, and where it is."""
    trunk = model.features
    with torch.no_grad():
        acts = trunk[: resolve_layer(trunk, layer) + 1](images)
    best, where = acts.flatten(2).max(dim=2)
    return best.t(), where.t(), acts.shape[-1]


def test_streamed_mining_equals_one_shot_over_the_data_set(setup):
    model, images, probe = setup
    cb = DeconvTopK(layers=LAYERS, features_per_layer=3, k=5, strict=True)
    _stream(cb, model, images)
    ctx = FakeContext()
    with torch.no_grad():
        tops = cb.mined(model, probe, ctx)
    assert ctx.gathers == 4 * len(LAYERS)
    for layer, top in tops.items():
        best, where, _ = _one_shot(model, images, layer)
        values, index = best.topk(5, dim=1)
        stored = top.channels
        torch.testing.assert_close(top.values[stored], values[stored])
        torch.testing.assert_close(top.values[:, 0], values[:, 0])  # every channel's maximum
        assert torch.equal(top.positions[stored], where.gather(1, index)[stored])
        assert top.channels.tolist() == seeded_channels(layer, best.shape[0], 3, 0)
        for f, c in enumerate(top.channels.tolist()):
            assert torch.equal(top.images[f], images[index[c]])


def test_without_a_stream_the_probe_set_is_mined(setup):
    model, _, probe = setup
    cb = DeconvTopK(layers=["conv2"], features_per_layer=2, k=4, strict=True)
    with torch.no_grad():
        top = cb.mined(model, probe, FakeContext())["conv2"]
    best, _, _ = _one_shot(model, probe.images, "conv2")
    expected = best.topk(4, dim=1).values
    torch.testing.assert_close(top.values[top.channels], expected[top.channels])
    torch.testing.assert_close(top.values[:, 0], expected[:, 0])


def test_tiles_are_the_cropped_projection_and_patch_of_each_winner(setup):
    model, images, probe = setup
    cb = DeconvTopK(layers=["conv2"], features_per_layer=2, k=3, tile=1, strict=True)
    _stream(cb, model, images)
    with torch.no_grad():
        top = cb.mined(model, probe, FakeContext())["conv2"]
        proj_tiles, patch_tiles = cb.crops(model, "conv2", top, probe)
        trunk = model.features
        field = receptive_field(trunk, "conv2")
        for f, c in enumerate(top.channels.tolist()):
            best, where, width = _one_shot(model, images, "conv2")
            index = best[c].topk(3).indices
            winners = images[index]
            proj = Deconvnet(trunk).project(winners, "conv2", torch.full((3,), c), where[c, index])
            boxes = unit_boxes(where[c, index], width, field, (64, 64))
            assert boxes[0, 2] == 27
            for j in range(3):
                assert np.array_equal(proj_tiles[f][j], contrast(crop(proj, boxes)[j]))
                patch = denormalize(crop(winners, boxes)[j], MEAN, STD)
                assert np.array_equal(patch_tiles[f][j], to_uint8(patch, 0.0, 1.0))


def test_analyze_draws_one_figure_per_layer_and_counts_silent_features(setup):
    model, images, probe = setup
    model = zfnet(num_classes=4, width=0.125).eval()
    with torch.no_grad():
        model.features.conv1.bias[[0, 3]] = -1e6
    cb = DeconvTopK(layers=LAYERS, features_per_layer=4, k=9, tile=16, ncols=2, strict=True)
    _stream(cb, model, images)
    with torch.no_grad():
        result = cb.analyze(model, probe, FakeContext(epoch=3))
    assert set(result.figures) == set(LAYERS)
    fig = result.figures["conv1"]
    assert isinstance(fig, Figure) and fig.image.dtype == np.uint8 and fig.image.shape[2] == 3
    assert "epoch 3" in fig.caption
    # 2 x 2 cells, each two 3x3 blocks of >= 16 px tiles side by side
    assert fig.image.shape[1] > 2 * 2 * 3 * 16 and fig.image.shape[0] > 2 * 3 * 16
    n_conv1 = channel_count(model.features, "conv1")
    assert result.scalars["conv1/silent_fraction"] == pytest.approx(2 / n_conv1)
    every = DeconvTopK(layers=["conv1"], features_per_layer=n_conv1, k=3, strict=True)
    _stream(every, model, images)
    with torch.no_grad():
        top = every.mined(model, probe, FakeContext())["conv1"]
        proj, patches = every.crops(model, "conv1", top, probe)
    silent = marked_tile(proj[0][0].shape[:2], "silent")
    for c in range(n_conv1):
        marked = all(np.array_equal(t, silent) for t in proj[c] + patches[c])
        assert marked == (c in (0, 3))
    with torch.no_grad():
        _stream(every, model, images)
        drawn = every.analyze(model, probe, FakeContext()).figures["conv1"]
    assert "; 2 silent. In the first layer a projection is the feature's filter" in drawn.caption
    # each silent feature is one hatched block over its two 2x2 grids (k=3): 8 tile areas, about
    # 7/8 of them background gray; 6 separate hatched tiles would cover less than 6 tile areas
    hatched = (drawn.image == SILENT_GRAY).all(-1).sum()
    area = proj[0][0].shape[0] * proj[0][0].shape[1]
    assert hatched > 2 * 8 * area * 0.8
    assert "2 silent" not in fig.caption  # the drawn features were chosen at random
    assert fig.caption.startswith("conv1: top 9 activations of 4 features")
    # only the first layer's projection is its filter; the others say nothing of the kind
    assert "filter itself" in fig.caption
    assert all("filter" not in result.figures[layer].caption for layer in LAYERS[1:])


def test_table_lists_each_positive_winner_with_its_class(setup):
    model, images, probe = setup
    probe = Probe(probe.images, probe.labels, None, MEAN, STD, ["a", "b", "c", "d"])
    cb = DeconvTopK(layers=["conv2"], features_per_layer=2, k=3, strict=True)
    _stream(cb, model, images, labels=torch.arange(40) % 4, indexed=True)
    with torch.no_grad():
        result = cb.analyze(model, probe, FakeContext())
    table = result.tables["conv2/top3"]
    assert table.columns == [
        "feature",
        "rank",
        "activation",
        "image",
        "class",
        "patch",
        "projection",
    ]
    best, _, _ = _one_shot(model, images, "conv2")
    channels = sorted({row[0] for row in table.rows})
    assert len(channels) == 2 and len(table.rows) == 6  # every winner of a random net is positive
    for channel, rank, value, i, name, patch, proj in table.rows:  # i: the validation index
        assert isinstance(i, int) and 0 <= i < len(images)
        assert name == "abcd"[i % 4]  # the class of the very image that won
        assert value == pytest.approx(float(best[channel, i]), rel=1e-5)
        assert value == pytest.approx(float(best[channel].topk(3).values[rank - 1]), rel=1e-5)
        assert patch.dtype == np.uint8 and proj.shape == patch.shape


def test_most_active_uses_the_probe_then_the_previous_epoch(setup):
    model, images, probe = setup
    cb = DeconvTopK(
        layers=["conv4"], features_per_layer=3, selection="most_active", k=2, strict=True
    )
    probe_best, _, _ = _one_shot(model, probe.images, "conv4")
    assert cb.stored_channels("conv4", model, probe) == sorted(
        probe_best.amax(1).topk(3).indices.tolist()
    )
    _stream(cb, model, images)
    with torch.no_grad():
        cb.analyze(model, probe, FakeContext(rank=1))
    all_best, _, _ = _one_shot(model, images, "conv4")
    expected = sorted(all_best.amax(1).topk(3).indices.tolist())
    assert cb.stored_channels("conv4", model, None) == expected
    restored = DeconvTopK(layers=["conv4"], features_per_layer=3, selection="most_active")
    restored.load_state_dict(cb.state_dict())
    assert restored.stored_channels("conv4", model, None) == expected


def test_other_ranks_merge_but_draw_nothing(setup):
    model, images, probe = setup
    cb = DeconvTopK(layers=["conv1"], features_per_layer=2, k=2, strict=True)
    _stream(cb, model, images)
    ctx = FakeContext(rank=1, world_size=2)
    with torch.no_grad():
        assert cb.analyze(model, probe, ctx) is None
    assert ctx.gathers == 5  # 4 to merge the top-k, 1 for the winners' classes


def test_random_selection_is_seeded():
    a, b = seeded_channels("conv3", 48, 16, 0), seeded_channels("conv3", 48, 16, 1)
    assert a == seeded_channels("conv3", 48, 16, 0) and a != b
    assert len(set(a)) == 16 and all(0 <= c < 48 for c in a) and a == sorted(a)
    assert seeded_channels("conv1", 5, 16, 0) == [0, 1, 2, 3, 4]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="random, most_active"):
        DeconvTopK(selection="best")
    with pytest.raises(ValueError, match="identity, gradient"):
        FeatureEvolution(lrn="none")


def test_evolution_appends_a_column_per_epoch_and_survives_resume(setup):
    _, images, probe = setup
    torch.manual_seed(1)
    model = zfnet(num_classes=4, width=0.125).eval()
    cb = FeatureEvolution(
        layers=["conv1", "conv4"],
        channels={"conv1": [2, 5]},
        features_per_layer=3,
        tile=8,
        strict=True,
    )
    for epoch in (0, 2):
        if epoch:
            model.features.conv1.weight.data.add_(
                0.2 * torch.randn_like(model.features.conv1.weight)
            )
        _stream(cb, model, images)
        with torch.no_grad():
            result = cb.analyze(model, probe, FakeContext(epoch=epoch))
    assert cb.channels["conv1"] == [2, 5] and len(cb.channels["conv4"]) == 3
    assert sorted(cb.strips["conv1"]) == [0, 2]
    assert not torch.equal(cb.strips["conv1"][0], cb.strips["conv1"][2])
    strip = result.figures["conv1"].image
    # the latest column is the top-1 projection of each feature with the current weights
    best, where, width = _one_shot(model, images, "conv1")
    field = receptive_field(model.features, "conv1")
    for row, c in enumerate([2, 5]):
        i = int(best[c].argmax())
        with torch.no_grad():
            proj = Deconvnet(model.features).project(images[i : i + 1], "conv1", torch.tensor([c]))
        tile = contrast(crop(proj, unit_boxes(where[c, i : i + 1], width, field, (64, 64)))[0])
        assert np.array_equal(cb.strips["conv1"][2][row].numpy(), resize(tile, (14, 14)))
    restored = FeatureEvolution(layers=["conv1", "conv4"], tile=8, strict=True)
    restored.load_state_dict(cb.state_dict())
    assert restored.channels == cb.channels
    _stream(restored, model, images)
    with torch.no_grad():
        later = restored.analyze(model, probe, FakeContext(epoch=5)).figures["conv1"]
    assert sorted(restored.strips["conv1"]) == [0, 2, 5]
    assert torch.equal(restored.strips["conv1"][0], cb.strips["conv1"][0])
    assert later.image.shape[0] == strip.shape[0] and "up to epoch 5" in later.caption
    assert not np.array_equal(later.image, strip)


def test_table_image_is_minus_one_without_a_loader_to_say_the_index(setup):
    model, images, probe = setup
    cb = DeconvTopK(layers=["conv2"], features_per_layer=1, k=2, strict=True)
    _stream(cb, model, images, labels=torch.arange(40) % 4)
    with torch.no_grad():
        table = cb.analyze(model, probe, FakeContext()).tables["conv2/top2"]
    assert [row[3] for row in table.rows] == [-1, -1]


def test_validation_indices_come_from_the_loaders_sampler():
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, DistributedSampler

    from zflight.callbacks.mining import validation_batch_indices

    data = list(range(10))
    plain = SimpleNamespace(val_dataloaders=DataLoader(data, batch_size=4))
    assert validation_batch_indices(plain) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # under DDP, Lightning gives each rank a distributed sampler: rank 1 of 2 sees the odd ones
    sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=False)
    ddp = SimpleNamespace(val_dataloaders=DataLoader(data, batch_size=2, sampler=sampler))
    assert validation_batch_indices(ddp) == [[1, 3], [5, 7], [9]]
    assert validation_batch_indices(SimpleNamespace()) is None


class Forwarding(VisualizationCallback):
    """Runs the model on a few probe images, as actmax or a custom analysis does."""

    name = "forwarding"

    def analyze(self, model, probe, ctx):
        model(probe.images[:3])
        return VizResult()


def test_mining_ignores_another_callbacks_forwards_after_the_last_batch(tiny):
    from zflight.train import train

    train(
        tiny(
            "trainer.max_epochs=1",
            "callbacks.fwd._target_=tests.test_deconv_callback.Forwarding",
            "callbacks.fwd.strict=true",
            "callbacks.deconv._target_=zflight.callbacks.deconv.DeconvTopK",
            "callbacks.deconv.layers=[conv1]",
            "callbacks.deconv.features_per_layer=2",
            "callbacks.deconv.strict=true",
        )
    )
