"""Scores on a probe set of their own: at least 64 validation images, drawn apart from the pictured
probes, and the scores computed on exactly those images."""

from __future__ import annotations

import contextlib

import pytest
import torch

from zflight.analysis.localization import mass_in_mask, pointing_game
from zflight.analysis.occlusion import occlusion_maps
from zflight.callbacks.heatmaps import HeatMaps
from zflight.callbacks.occlusion import Occlusion
from zflight.callbacks.results import Probe
from zflight.callbacks.scoring import ScoreProbes
from zflight.models import zfnet

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class Dataset:
    """``n`` (image, label, mask) samples whose image holds its own index, to tell them apart."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 64, 64, generator=g)
        self.images[:, 0, 0, 0] = torch.arange(n).float()
        self.masks = torch.zeros(n, 64, 64, dtype=torch.bool)
        self.masks[:, 20:44, 16:40] = True

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], i % 4, self.masks[i]


class DataModule:
    def __init__(self, n: int) -> None:
        self.val_dataset = Dataset(n)
        self.mean, self.std, self.class_names = MEAN, STD, ["a", "b", "c", "d"]


class Trainer:
    def __init__(self, n: int) -> None:
        self.datamodule = DataModule(n)


class Context:
    rank, world_size, epoch, device = 0, 1, 0, torch.device("cpu")

    def __init__(self, trainer: Trainer | None) -> None:
        self.trainer = trainer

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def drawn(trainer: Trainer, num: int = 3) -> Probe:
    dm = trainer.datamodule
    return Probe.from_dataset(dm.val_dataset, num, 0, mean=MEAN, std=STD, class_names=["a"] * 4)


def test_default_score_sets_hold_64_images_drawn_apart_from_the_probes():
    assert Occlusion()._scores.num == 64 and HeatMaps()._scores.num == 64
    trainer = Trainer(200)
    probe = drawn(trainer, 8)
    scores = ScoreProbes(64, 0)
    scored = scores.get(trainer, probe)
    assert len(scored.labels) == 64 and scored.masks is not None and len(scored.masks) == 64
    same_seed = Probe.from_dataset(trainer.datamodule.val_dataset, 64, 0).indices
    assert scored.indices != same_seed and len(set(scored.indices)) == 64  # a draw of its own
    assert scored.indices == sorted(scored.indices)
    # the images are the data set's, in the order of their indices
    assert scored.images[:, 0, 0, 0].long().tolist() == scored.indices
    assert torch.equal(scores.get(trainer, probe).images, scored.images)  # the same every epoch
    assert len(ScoreProbes(64, 0).get(Trainer(40), probe).labels) == 40  # a small set: all of it


def test_without_a_trainer_or_with_zero_the_drawn_probes_are_scored():
    probe = drawn(Trainer(10))
    assert ScoreProbes(64, 0).get(None, probe) is probe
    assert ScoreProbes(0, 0).get(Trainer(10), probe) is probe
    with pytest.raises(ValueError, match="score_probes"):
        ScoreProbes(-1, 0)


def test_occlusion_scores_are_those_of_its_64_score_images():
    torch.manual_seed(0)
    model = zfnet(num_classes=4, width=0.125, head_pool=2).eval()
    trainer = Trainer(100)
    probe = drawn(trainer)
    cb = Occlusion(size=16, stride=16, deconv=False, strict=True)
    with torch.no_grad():
        result = cb.analyze(model, probe, Context(trainer))
    scored = cb._scores.get(trainer, probe)
    maps = occlusion_maps(
        model, scored.images, scored.labels, size=16, stride=16, mean=MEAN, std=STD
    )
    drops = maps.upsample(maps.drop())
    expected = pointing_game(drops, scored.masks).float().mean().item()
    assert result.scalars["pointing_game"] == pytest.approx(expected)
    assert result.scalars["pointing_game"] * 64 == pytest.approx(round(expected * 64))
    assert result.scalars["mass_in_mask"] == pytest.approx(
        mass_in_mask(drops, scored.masks).mean().item(), abs=1e-6
    )
    assert result.figures["panels"].caption.startswith("Occlusion of 3 probe images")  # drawn only
    assert "Scores use 64 other validation images." in result.figures["panels"].caption
