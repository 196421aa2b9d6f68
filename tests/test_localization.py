"""Pointing game and mass-in-mask on constructed maps."""

from __future__ import annotations

import torch

from zflight.analysis.localization import dilate, mass_in_mask, peak_pixel, pointing_game


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
