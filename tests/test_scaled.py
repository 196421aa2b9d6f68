"""Defaults that follow the image size, score sets only where masks exist, callbacks.budget."""

from __future__ import annotations

import pytest
import torch

from zflight.analysis.occlusion import window_starts
from zflight.analysis.scaled import actmax_resolution, occluder_for
from zflight.callbacks.actmax import ActivationMaximization
from zflight.callbacks.occlusion import Occlusion
from zflight.callbacks.results import Probe
from zflight.callbacks.scoring import ScoreProbes
from zflight.config import ConfigError, analysis_budget, load_config


def test_occluder_is_an_eighth_of_the_side_on_an_8_by_8_grid():
    assert occluder_for(64) == (8, 8), "the shapes default is unchanged"
    assert occluder_for(224) == (28, 28)
    for side in (64, 96, 224, 256):
        size, stride = occluder_for(side)
        assert len(window_starts(side, size, stride)) == 8
    assert Occlusion().square(224) == (28, 28) and Occlusion(size=16, stride=8).square(224) == (
        16,
        8,
    )
    with pytest.raises(ValueError, match="stride needs a size"):
        Occlusion(stride=4)


def test_actmax_resolution_is_the_image_at_most_128_px():
    assert actmax_resolution(64) == 64 and actmax_resolution(224) == 128
    assert ActivationMaximization().image_size(224, 224) == (128, 128)
    assert ActivationMaximization().image_size(64, 64) == (64, 64)
    assert ActivationMaximization(resolution=224).image_size(224, 224) == (224, 224)


class Folder:
    """A validation set of (image, label[, mask]) that counts the samples read."""

    def __init__(self, n: int, masks: bool) -> None:
        self.n, self.masks, self.reads = n, masks, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.reads += 1
        image = torch.full((3, 8, 8), float(i))
        return (image, i % 2, torch.ones(8, 8)) if self.masks else (image, i % 2)


def trainer_with(dataset):
    dm = type("DM", (), {"val_dataset": dataset, "mean": (0.5,) * 3, "std": (0.3,) * 3})()
    return type("T", (), {"datamodule": dm})()


def test_no_score_set_without_masks():
    drawn = Probe(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), None)
    plain = Folder(100, masks=False)
    scores = ScoreProbes(64, 0)
    assert scores.get(trainer_with(plain), drawn) is drawn
    assert plain.reads == 1, "one sample read to see there are no masks, no set built"
    assert scores.get(trainer_with(plain), drawn) is drawn and plain.reads == 1
    masked = Folder(100, masks=True)
    got = ScoreProbes(64, 0).get(trainer_with(masked), drawn)
    assert got is not drawn and len(got.labels) == 64 and got.masks.shape == (64, 8, 8)


def test_estimates_count_score_images_only_with_masks():
    occ = Occlusion(num_probes=8, score_probes=64)
    # 8 x 8 positions (+ the unoccluded image), 2 forwards a probe for the projection
    assert occ.estimate_forwards((3, 224, 224), 1, masks=False) == 8 * 65 + 16
    assert occ.estimate_forwards((3, 224, 224), 1, masks=True) == 72 * 65 + 16
    assert occ.estimate_forwards((3, 224, 224), 4, masks=False) == 8 * 65 / 4 + 16


def test_budget_key_is_checked_and_is_no_callback():
    cfg = load_config(["callbacks.budget=0.02"])
    assert analysis_budget(cfg) == 0.02
    assert analysis_budget(load_config([])) is None
    for bad in ("2", "0", "true", "much"):
        with pytest.raises(ConfigError, match=r"callbacks.budget=.* must be a share"):
            load_config([f"callbacks.budget={bad}"])
    from zflight.run.build import build_callbacks
    from zflight.run.signatures import check_callback_arguments

    check_callback_arguments(cfg)  # the budget is no callback to check arguments of

    names = [type(c).__name__ for c in build_callbacks(cfg)]
    assert "DeconvTopK" in names and len(names) == len(load_config([]).callbacks)
