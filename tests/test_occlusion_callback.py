"""The Occlusion callback: panels, mask scores against a brute-force formulation, ranks, a real fit."""

from __future__ import annotations

import contextlib
import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from tests.test_occlusion import RegionModel
from zflight.analysis.images import class_colours, legend
from zflight.callbacks.occlusion import Occlusion
from zflight.callbacks.results import Probe
from zflight.data.modules import ShapesDataModule
from zflight.models import zfnet
from zflight.module import ClassifierModule

pytestmark = pytest.mark.usefixtures("one_thread")  # many small ops


class FakeContext:
    """What analyze needs from AnalysisContext; ``all_gather`` repeats this rank's share."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.device = torch.device("cpu")
        self.gathered: list[int] = []

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        self.gathered.append(t.shape[0])
        return torch.cat([t] * self.world_size)

    def autocast(self):
        return contextlib.nullcontext()


SIZE, K, STARTS = 20, 6, [0, 4, 8, 12, 14]
ROWS, COLS = (5, 11), (3, 9)


def _region_probe() -> tuple[RegionModel, Probe]:
    model = RegionModel(
        SIZE, [(slice(*ROWS), slice(*COLS)), (slice(0, 0), slice(0, 0))], [0.05, 0.0], [0.0, 2.75]
    )
    images = torch.stack([torch.full((3, SIZE, SIZE), 1.0), torch.full((3, SIZE, SIZE), 0.5)])
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[0, ROWS[0] : ROWS[1], COLS[0] : COLS[1]] = True
    masks[1, 14:, 14:] = True
    return model, Probe(
        images, torch.tensor([0, 1]), masks, (0.5,) * 3, (0.3,) * 3, ["left", "right"]
    )


def _brute_force_drop(c: float, label: int) -> np.ndarray:
    """Per pixel, the mean over the windows covering it of the fall in true-class probability."""

    def p_true(hidden: int) -> float:
        p0 = 1 / (1 + np.exp(-(0.05 * 3 * c * (36 - hidden) - 2.75)))
        return p0 if label == 0 else 1 - p0

    base = p_true(0)
    total, count = np.zeros((SIZE, SIZE)), np.zeros((SIZE, SIZE))
    for t in STARTS:
        for left in STARTS:
            hidden = max(0, min(t + K, ROWS[1]) - max(t, ROWS[0])) * max(
                0, min(left + K, COLS[1]) - max(left, COLS[0])
            )
            total[t : t + K, left : left + K] += base - p_true(hidden)
            count[t : t + K, left : left + K] += 1
    return total / count


def test_scores_and_panels_on_a_model_with_known_evidence():
    model, probe = _region_probe()
    cb = Occlusion(size=K, stride=4, feature_layer="conv1", strict=True)
    result = cb.analyze(model, probe, FakeContext())
    hits, shares = [], []
    for n, (c, label) in enumerate([(1.0, 0), (0.5, 1)]):
        drop, mask = _brute_force_drop(c, label), probe.masks[n].numpy()
        hits.append(bool(mask.flat[int(np.argmax(drop))]))
        positive = np.clip(drop, 0, None)
        shares.append(positive[mask].sum() / positive.sum() if positive.sum() > 0 else 0.0)
    assert hits == [True, False]  # image 1: occluding its evidence only raises p(true)
    assert 0.3 < shares[0] < 0.7  # windows that overlap the mask also drop outside it
    assert result.scalars["pointing_game"] == pytest.approx(np.mean(hits))
    assert result.scalars["mass_in_mask"] == pytest.approx(np.mean(shares), abs=1e-5)
    # the baselines on the same masks: the centre pixel (9, 9) is on object 0 (within the 1.34 px
    # tolerance), not on object 1; a random map's expectations are the masks' shares
    grown = _grown_by_one(probe.masks.numpy())
    assert result.scalars["pointing_game_baseline_centre"] == 0.5
    assert result.scalars["pointing_game_baseline_random"] == pytest.approx(grown.mean())
    assert result.scalars["mass_in_mask_baseline_random"] == pytest.approx((36 + 36) / 800)
    best = max(0.5, grown.mean())
    assert result.scalars["pointing_game_margin"] == pytest.approx(np.mean(hits) - best)
    assert "pointing game 0.50 (centre 0.50, random" in fig_caption(result)
    fig = result.figures["panels"]  # one figure: a titled panel per probe image, stacked
    assert fig.image.dtype == np.uint8 and fig.image.ndim == 3
    assert fig.caption.startswith(
        "Occlusion of 2 probe images (0 misclassified) by a grey 6 px patch"
    )
    assert "p(the true class) with the grey patch centred at each position (colour bar 0 to 1)" in (
        fig.caption
    )
    assert "deconvnet projection" in fig.caption and "Scores use these images." in fig.caption
    tile = SIZE * 7  # enlarged to at least 128 px
    assert fig.image.shape[1] >= 5 * tile  # image, p(true), labels, feature, deconv
    assert fig.image.shape[0] >= 2 * tile  # two panels
    narrow = Occlusion(size=K, stride=4, feature_layer="conv1", deconv=False, strict=True)
    panel = narrow.analyze(model, probe, FakeContext()).figures["panels"]
    assert panel.image.shape[1] < fig.image.shape[1] - tile
    assert "deconvnet" not in panel.caption


def fig_caption(result) -> str:
    return result.figures["panels"].caption


def _grown_by_one(masks: np.ndarray) -> np.ndarray:
    """Masks dilated by the default tolerance at 20 px (1.34 px: the 4-neighbours)."""
    grown = masks.copy()
    grown[:, 1:] |= masks[:, :-1]
    grown[:, :-1] |= masks[:, 1:]
    grown[:, :, 1:] |= masks[:, :, :-1]
    grown[:, :, :-1] |= masks[:, :, 1:]
    return grown


def test_other_ranks_gather_and_return_nothing():
    model, probe = _region_probe()
    cb = Occlusion(size=K, stride=4, feature_layer="conv1", strict=True)
    ctx = FakeContext(rank=1, world_size=2)
    assert cb.analyze(model, probe, ctx) is None
    # 2 images x 25 positions, half each, one collective; then the deletion and insertion
    # curves: 2 orders (the drop map's, a random one) x 2 modes x 2 images x 9 inner steps, and
    # the curves' 2 ends per image, half each
    assert ctx.gathered == [25, (2 * 2 * 2 * 9 + 2 * 2) // 2]


def test_model_without_trunk_gets_three_tiles_and_no_scores():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 3)
    ).eval()
    probe = Probe(torch.randn(2, 3, 16, 16), torch.tensor([0, 2]), None)
    result = Occlusion(size=4, stride=4, strict=True).analyze(model, probe, FakeContext())
    assert "pointing_game" not in result.scalars  # no masks: no localisation scores
    assert set(result.scalars) == {
        f"{mode}_{what}"
        for mode in ("deletion", "insertion")
        for what in ("auc", "auc_baseline_random", "margin")
    }
    panel = result.figures["panels"].image
    assert 3 * 128 <= panel.shape[1] < 4 * 128 + 60  # the p(true) tile carries a colour bar


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="fill"):
        Occlusion(fill="grey")
    with pytest.raises(ValueError, match="method"):
        Occlusion(method="fast")
    with pytest.raises(ValueError, match="stride"):
        Occlusion(size=8, stride=12)


def test_legend_draws_one_swatch_per_class():
    colours = class_colours(3)
    assert len(set(colours)) == 3
    img = legend([(np.array(c), f"class {i}") for i, c in enumerate(colours)], width=80)
    assert img.shape == (3 * 14 + 2, 80, 3)
    for k, c in enumerate(colours):
        assert tuple(img[1 + k * 14 + 5, 6]) == c  # inside the k-th swatch


class _Data(ShapesDataModule):
    def __init__(self) -> None:
        super().__init__(train_size=64, val_size=16, image_size=64, batch_size=32, cache_dir=None)


def test_fit_writes_panels_and_scores(tmp_path):
    torch.manual_seed(0)
    module = ClassifierModule(
        zfnet(num_classes=8, width=0.125, head_pool=2), 8, optimizer="adamw", lr=1e-3
    )
    cb = Occlusion(num_probes=3, score_probes=12, strict=True)
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        max_epochs=1,
        limit_train_batches=1,
        callbacks=[cb],
    )
    trainer.fit(module, datamodule=_Data())
    png = tmp_path / "viz" / "occlusion" / "panels" / "epoch_0000.png"
    assert png.exists()
    lines = [
        json.loads(line) for line in (tmp_path / "viz" / "scalars.jsonl").read_text().splitlines()
    ]
    keys = {r["key"] for r in lines}
    assert {"occlusion/pointing_game", "occlusion/mass_in_mask"} <= keys
    shares = [r for r in lines if r["key"].startswith("occlusion/") and "margin" not in r["key"]]
    assert all(0.0 <= r["value"] <= 1.0 for r in shares)
    assert all(-1.0 <= r["value"] <= 1.0 for r in lines if "margin" in r["key"])
    scored = cb._scores.get(trainer, cb.probe(trainer, torch.device("cpu")))
    assert len(scored.labels) == 12 and scored.masks is not None
    game = next(r["value"] for r in lines if r["key"] == "occlusion/pointing_game")
    assert game * 12 == pytest.approx(round(game * 12))  # a share of the 12 scored images
    assert cb.logged_epochs == [0]


def test_p_true_caption_names_the_patch_and_says_when_it_changes_nothing():
    from zflight.callbacks.occlusion import occluded_caption

    varied = torch.tensor([[0.2, 1.0], [1.0, 1.0]])
    assert occluded_caption("square", varied) == "p(square) if the patch is here"
    flat = torch.full((4, 4), 0.998)
    flat[0, 0] = 0.995
    assert occluded_caption("circle", flat) == "p(circle): no effect"


class Blind(nn.Module):
    """Logits that ignore the image: no patch changes anything."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([3.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), 2) + 0 * x.mean()


def test_a_patch_that_changes_nothing_is_said_so_in_the_caption():
    _, probe = _region_probe()
    cb = Occlusion(size=K, stride=4, deconv=False, score_probes=0, strict=True)
    with torch.no_grad():
        fig = cb.analyze(Blind(), probe, FakeContext()).figures["panels"]
    assert "On 2 of 2 images the patch changes p(true class) nowhere ('no effect')" in fig.caption
    model, probe = _region_probe()
    seeing = Occlusion(size=K, stride=4, feature_layer="conv1", deconv=False, strict=True)
    with torch.no_grad():
        fig = seeing.analyze(model, probe, FakeContext()).figures["panels"]
    assert "no effect" not in fig.caption
