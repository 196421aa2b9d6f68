"""Picture helpers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zflight.analysis.images import resize


@pytest.mark.parametrize("size", [(12, 15), (24, 10), (7, 5), (9, 13)])
def test_resize_matches_pil_nearest_for_whole_and_fractional_factors(size):
    img = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(img).resize(size[::-1], Image.NEAREST))
    out = resize(img, size)
    assert out.shape == (*size, 3) and np.array_equal(out, expected)
