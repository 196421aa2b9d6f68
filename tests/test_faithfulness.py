"""Deletion and insertion curves against closed forms, split across ranks."""

from __future__ import annotations

import math

import torch
from torch import nn

from zflight.analysis.faithfulness import auc, deletion_insertion, pixel_order, random_order

S, A = 6, 0.5
REGION = (slice(1, 4), slice(2, 5))  # 9 pixels the logit reads


class ReadsRegion(nn.Module):
    """Logit 0 = A x (sum of channel 0 over ``REGION``), logit 1 = 0: p(class 0) is a sigmoid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = A * x[:, 0, REGION[0], REGION[1]].sum((1, 2))
        return torch.stack([z, torch.zeros_like(z)], 1)


def _setup():
    images = torch.ones(2, 3, S, S)
    labels = torch.tensor([0, 0])
    fills = torch.zeros_like(images)
    region_map = torch.zeros(2, S, S)
    region_map[:, REGION[0], REGION[1]] = 1.0
    return images, labels, fills, region_map


def test_curves_follow_the_closed_form_for_a_map_that_orders_the_evidence_first():
    images, labels, fills, region_map = _setup()
    g = torch.Generator().manual_seed(0)
    order = pixel_order(region_map, g)
    assert set(order[0, :9].tolist()) == {r * S + c for r in range(1, 4) for c in range(2, 5)}
    steps = 4
    curves = deletion_insertion(
        ReadsRegion(), images, labels, fills, order[None], steps=steps, batch_size=5
    )
    assert curves.shape == (1, 2, 2, steps + 1)
    for k in range(steps + 1):
        changed = min(9, round(k * S * S / steps))  # the region's pixels go first
        sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
        assert math.isclose(curves[0, 0, 0, k].item(), sig(A * (9 - changed)), rel_tol=1e-6)
        assert math.isclose(curves[0, 1, 0, k].item(), sig(A * changed), rel_tol=1e-6)
    # the evidence first deletes fastest and inserts fastest: it beats any random order
    rnd = random_order(2, S * S, g)
    both = deletion_insertion(
        ReadsRegion(), images, labels, fills, torch.stack([order, rnd]), steps=steps
    )
    areas = auc(both).mean(-1)
    assert areas[0, 0] < areas[1, 0] and areas[0, 1] > areas[1, 1]


def test_auc_and_pixel_order_ties():
    assert math.isclose(auc(torch.full((3,), 0.7, dtype=torch.float64)).item(), 0.7)
    assert math.isclose(auc(torch.linspace(0, 1, 5)).item(), 0.5)
    maps = torch.zeros(1, 4, 4)
    maps[0, 3, 3] = 2.0
    maps[0, 0, 1] = 1.0
    a = pixel_order(maps, torch.Generator().manual_seed(1))
    b = pixel_order(maps, torch.Generator().manual_seed(2))
    assert a[0, :2].tolist() == [15, 1] == b[0, :2].tolist()
    assert sorted(a[0].tolist()) == list(range(16))
    assert a[0, 2:].tolist() != b[0, 2:].tolist()  # ties in a seeded random order, not raster


def test_two_ranks_compute_the_same_curves_as_one():
    images, labels, fills, region_map = _setup()
    g = torch.Generator().manual_seed(0)
    orders = torch.stack([pixel_order(region_map, g), random_order(2, S * S, g)])
    whole = deletion_insertion(ReadsRegion(), images, labels, fills, orders, steps=3)
    shares = []
    for rank in (0, 1):
        seen = []

        def gather(t, seen=seen):
            seen.append(t)
            return torch.cat([t, t])

        deletion_insertion(
            ReadsRegion(),
            images,
            labels,
            fills,
            orders,
            steps=3,
            rank=rank,
            world_size=2,
            all_gather=gather,
        )
        assert len(seen) == 1  # one collective per call
        shares.append(seen[0])
    assert shares[0].shape == shares[1].shape == ((2 * 2 * 2 * 2 + 2 * 2) // 2,)
    joined = deletion_insertion(
        ReadsRegion(),
        images,
        labels,
        fills,
        orders,
        steps=3,
        rank=0,
        world_size=2,
        all_gather=lambda t: torch.cat(shares),  # what a real gather returns on every rank
    )
    torch.testing.assert_close(joined, whole)
