"""Picture helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zflight.analysis.images import (
    SILENT_GRAY,
    colorbar,
    colormap,
    contrast,
    flag,
    fmt,
    fmt_percent,
    fmt_range,
    legend,
    marked_tile,
    resize,
    to_uint8,
    with_colorbar,
)


@pytest.mark.parametrize("size", [(12, 15), (24, 10), (7, 5), (9, 13)])
def test_resize_matches_pil_nearest_for_whole_and_fractional_factors(size):
    img = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(img).resize(size[::-1], Image.NEAREST))
    out = resize(img, size)
    assert out.shape == (*size, 3) and np.array_equal(out, expected)


def test_colorbar_top_and_bottom_rows_are_the_colormap_at_max_and_min():
    bar = colorbar(0.2, 0.9, 100, "jet", "p(true)")
    assert bar.shape[0] == 100
    top = colormap(np.array([[0.9]]), "jet", 0.2, 0.9)[0, 0]
    bottom = colormap(np.array([[0.2]]), "jet", 0.2, 0.9)[0, 0]
    assert np.array_equal(bar[0, :12], np.tile(top, (12, 1)))
    assert np.array_equal(bar[-1, :12], np.tile(bottom, (12, 1)))
    assert not np.array_equal(top, bottom)


def test_with_colorbar_keeps_the_image_and_matches_its_height():
    img = np.full((80, 50, 3), 7, np.uint8)
    out = with_colorbar(img, 0.0, 1.0, "inferno")
    assert out.shape[0] == 80 + 6  # hstack's padding of 3 above and below
    assert np.array_equal(out[3:83, 3:53], img)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.04913, "0.0491"),
        (-1.7449, "-1.74"),
        (1.74, "1.74"),
        (12.0, "12"),
        (0.5, "0.5"),
        (1234.5, "1234"),
        (0.0, "0"),
        (1.234e-5, "1.23e-05"),
        (123456.0, "1.23e+05"),
    ],
)
def test_fmt_gives_significant_digits_without_exponent_in_the_readable_range(value, text):
    assert fmt(value) == text


def test_ranges_and_percentages_are_separated_from_their_neighbours():
    assert fmt_range(0.04913, 1.74) == "0.0491 to 1.74"
    assert fmt_range(-0.5, -0.25) == "-0.5 to -0.25"
    assert fmt_percent(0.9061) == "90.6%"


def test_marked_tile_is_hatched_gray_with_text_and_unlike_a_flat_tile():
    tile = marked_tile((64, 64), "silent")
    assert tile.shape == (64, 64, 3)
    values = set(np.unique(tile[..., 0]).tolist())
    assert {SILENT_GRAY, 150, 255} <= values  # background, hatching, the label's white box
    assert (tile[..., 0] < 140).any()  # the dark text


def test_flag_frames_a_tile_in_its_colour():
    img = np.zeros((20, 20, 3), np.uint8)
    out = flag(img, "not reached", (210, 30, 30), width=3)
    assert np.array_equal(out[-1, 0], [210, 30, 30]) and np.array_equal(out[-4, 3], [0, 0, 0])
    assert np.array_equal(out[-10, 10], [0, 0, 0])


def test_legend_rows_carry_their_swatch_colour():
    out = legend([((255, 0, 0), "circle"), ((0, 0, 255), "square")], 60, row=14)
    assert out.shape[0] == 2 * 14 + 2 and out.shape[1] >= 60
    assert np.array_equal(out[1 + 7, 7], [255, 0, 0]) and np.array_equal(
        out[15 + 7, 7], [0, 0, 255]
    )


def test_contrast_maps_a_projection_with_known_extremes_to_the_full_range():
    ramp = torch.linspace(-0.02, 0.005, 3 * 10 * 10).view(3, 10, 10)  # small, mostly negative
    out = contrast(ramp, clip=0.0)
    assert out.min() == 0 and out.max() == 255
    assert out[0, 0, 0] == 0 and out[-1, -1, 2] == 255  # min at the first value, max at the last
    # channel 1, row 5, column 0 is value 150 of 300: 150/299 of the way from min to max
    assert abs(int(out[5, 0, 1]) - 255 * 150 / 299) <= 1


def test_contrast_is_per_tile_and_robust_to_a_few_outliers():
    g = torch.Generator().manual_seed(0)
    faint = torch.randn(3, 16, 16, generator=g) * 1e-3
    faint[0, 0, 0] = 1.0  # one extreme pixel
    out = contrast(faint)  # clip 0.5% at each end
    assert out.max() == 255 and out.min() == 0
    assert out.std() > 40  # the rest spans the range instead of sitting at one grey
    flat = to_uint8(faint)  # plain min/max: the outlier squeezes everything else together
    assert flat.std() < 10
