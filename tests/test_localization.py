"""Pointing game and mass-in-mask on constructed maps."""

from __future__ import annotations

import pytest
import torch

from zflight.analysis.localization import (
    baseline_scores,
    centre_map,
    dilate,
    mass_in_mask,
    peak_pixel,
    pointing_game,
    scores_with_baselines,
)


def test_pointing_game_hits_misses_and_tolerance():
    masks = torch.zeros(3, 20, 20, dtype=torch.bool)
    masks[:, 5:10, 5:10] = True
    maps = torch.zeros(3, 20, 20)
    maps[0, 7, 7] = 1.0  # inside
    maps[1, 7, 12] = 1.0  # 3 px right of the mask
    maps[2, 18, 18] = 1.0  # far away
    assert pointing_game(maps, masks, tolerance=0).tolist() == [True, False, False]
    assert pointing_game(maps, masks, tolerance=3).tolist() == [True, True, False]
    assert pointing_game(maps, masks, tolerance=2.9).tolist() == [True, False, False]
    # default tolerance: 15 px at 224 px wide, i.e. 1.34 px here
    assert pointing_game(maps, masks).tolist() == [True, False, False]


def test_dilate_is_a_euclidean_disk():
    m = torch.zeros(1, 9, 9, dtype=torch.bool)
    m[0, 4, 4] = True
    grown = dilate(m, 2.0)[0]
    assert grown.sum() == 13  # lattice points within distance 2: 1 + 4 + 4 + 4
    assert grown[4, 6] and grown[2, 4] and not grown[6, 6]


def test_mass_in_mask():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2] = True
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3], maps[0, 2, 2] = 3.0, 1.0, -5.0  # negative evidence is ignored
    assert torch.allclose(mass_in_mask(maps, masks), torch.tensor([0.75, 0.0]))


def test_pointing_game_points_at_the_middle_of_a_tied_block():
    # An 8x8 block of equal maxima (one occlusion window) whose top-left corner is off the object
    # and whose middle is on it: the map points at the block's middle.
    maps = torch.zeros(1, 32, 32)
    maps[0, 8:16, 8:16] = 1.0
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, 11:14, 11:14] = True
    assert peak_pixel(maps).tolist() == [11 * 32 + 11]  # nearest to the centroid (11.5, 11.5)
    assert pointing_game(maps, masks, tolerance=0).tolist() == [True]
    masks_corner = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks_corner[0, 8, 8] = True
    assert pointing_game(maps, masks_corner, tolerance=0).tolist() == [False]
    # a single maximum is found as by argmax
    maps[0, 30, 2] = 2.0
    assert peak_pixel(maps).tolist() == [30 * 32 + 2]


def test_no_positive_evidence_points_at_nothing_and_rounding_ties():
    masks = torch.ones(3, 8, 8, dtype=torch.bool)
    maps = torch.zeros(3, 8, 8)
    maps[1] = -1.0
    maps[2, 3, 3] = 1e-12  # the only positive value is rounding against the map's magnitude
    maps[2, 0, 0] = -1.0
    assert pointing_game(maps, masks).tolist() == [False, False, False]
    assert mass_in_mask(maps, masks).tolist() == [0.0, 0.0, 0.0]
    block = torch.zeros(1, 8, 8)
    block[0, 2:6, 2:6] = 1.0
    block[0, 2, 2] = 1.0 + 1e-7  # equal but for rounding: still one tied block
    assert peak_pixel(block).tolist() == [3 * 8 + 3]


def test_centre_baseline_and_random_expectations_on_constructed_masks():
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, 4:7, 4:7] = True  # on the centre
    masks[1, 0:2, 0:5] = True  # in a corner
    base = baseline_scores(masks, tolerance=0)
    assert base["centre_pointing_game"].tolist() == [1.0, 0.0]
    assert base["random_pointing_game"].tolist() == [0.09, 0.10]
    assert base["random_mass_in_mask"].tolist() == [0.09, 0.10]
    g = centre_map(10, 10).double()
    expected = [(g[4:7, 4:7].sum() / g.sum()).item(), (g[0:2, 0:5].sum() / g.sum()).item()]
    torch.testing.assert_close(base["centre_mass_in_mask"], torch.tensor(expected).double())
    # the expectations are what many uniform random maps score on average
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(4000, 10, 10, generator=gen)
    for k in range(2):
        m = masks[k].expand(4000, 10, 10)
        hits = pointing_game(noise, m, tolerance=0).double().mean().item()
        assert abs(hits - base["random_pointing_game"][k].item()) < 0.015
        mass = mass_in_mask(noise, m).double().mean().item()
        assert abs(mass - base["random_mass_in_mask"][k].item()) < 0.005


def test_scores_with_baselines_give_the_margin_over_the_better_baseline():
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[:, 0:2, 0:5] = True
    maps = torch.zeros(2, 10, 10)
    maps[0, 0, 0] = 1.0  # on the object
    maps[1, 9, 9] = 1.0  # off it
    s = scores_with_baselines(maps, masks, prefix="m_", tolerance=0)
    assert s["m_pointing_game"] == 0.5 and s["m_mass_in_mask"] == 0.5
    assert s["m_pointing_game_baseline_centre"] == 0.0
    assert s["m_pointing_game_baseline_random"] == 0.1
    assert s["m_pointing_game_margin"] == 0.5 - 0.1
    assert s["m_mass_in_mask_baseline_centre"] < 0.1  # a corner object: random is the better
    assert s["m_mass_in_mask_margin"] == pytest.approx(0.5 - 0.1)


def test_dilate_equals_a_convolution_with_the_disk():
    masks = torch.rand(5, 23, 31, generator=torch.Generator().manual_seed(0)) > 0.93
    for radius in (1.0, 1.5, 2.9, 4.3):
        r = int(radius)
        d = torch.arange(-r, r + 1, dtype=torch.float32)
        disk = ((d[:, None] ** 2 + d[None, :] ** 2) <= radius**2).float()[None, None]
        conv = torch.nn.functional.conv2d(masks[:, None].float(), disk, padding=r)[:, 0] > 0
        assert torch.equal(dilate(masks, radius), conv)
