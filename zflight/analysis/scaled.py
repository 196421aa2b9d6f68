"""Analysis settings that follow the image size, each with where its value comes from.

An occluder sized for 64 px shapes is wrong at 224 px: 8 px squares every 8 px are 784 positions
an image there, 12 times the 64 the shapes run was tuned on. These rules keep what was measured to
work at 64 px and scale it with the side of the image.
"""

from __future__ import annotations

OCCLUSION_GRID = 8  # positions per axis


def occluder_for(side: int) -> tuple[int, int]:
    """(size, stride) of the occluding square for images ``side`` pixels wide.

    The square is an eighth of the side and steps by its own size: 8 x 8 positions at every size.
    Source: the 64 px default (8 px every 8 px), which put the largest drop in the object for 89%
    of 64 shapes images after the default run (a 16 px square: 72%); at 224 px that is a 28 px
    square every 28 px. Zeiler & Fergus (2013, Sec. 4.2, Fig. 7) slide a gray square over 224 px
    images but print neither its size nor its stride, so no value is taken from the paper.
    """
    size = max(1, round(side / OCCLUSION_GRID))
    return size, size


ACTMAX_MAX_RESOLUTION = 128


def actmax_resolution(side: int) -> int:
    """Side of the images activation maximisation optimises: the image's, at most 128 px.

    Source: the cost of a step grows with the pixels (224 px costs 3.1 times 128 px), while 128 px
    already holds most of a conv5 unit's receptive field (139 px in ZFNet, REFERENCE "Deconvnet");
    fc8 units see it through the adaptive pool before fc6.
    """
    return min(side, ACTMAX_MAX_RESOLUTION)
