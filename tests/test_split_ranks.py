"""Heat maps, invariance and activation maximisation split across two gloo processes give what one
process computes alone: images (and units) are shared out, gathered, and drawn by rank 0."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zflight.analysis.shards import sharded, share
from zflight.callbacks.actmax import ActivationMaximization
from zflight.callbacks.heatmaps import HeatMaps
from zflight.callbacks.invariance import Invariance
from zflight.callbacks.results import Figure, Probe
from zflight.models import zfnet


def test_shares_cover_every_item_once_and_pad_with_item_0():
    assert [share(5, r, 2) for r in range(2)] == [[0, 1, 2], [3, 4, 0]]
    assert [share(3, r, 4) for r in range(4)] == [[0], [1], [2], [0]]
    seen = [i for r in range(3) for i in share(7, r, 3)[: len(range(7)[r * 3 : r * 3 + 3])]]
    assert seen == list(range(7))

    def gather_of(world):  # what all_gather gives when every rank ran fn on its share
        return lambda t: torch.cat([fn(share(7, r, world))[0] for r in range(world)])

    fn = lambda rows: (torch.tensor(rows, dtype=torch.float32) * 10,)  # noqa: E731
    for world in (2, 3):
        (got,) = sharded(fn, 7, 0, world, gather_of(world))
        assert got.tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]


def callbacks():
    return [
        HeatMaps(num_probes=3, score_probes=0),
        Invariance(num_images=3, num_values=3, num_probes=3),
        ActivationMaximization(layers=["conv2", "fc8"], units_per_layer=3, steps=3),
    ]


def inputs():
    torch.manual_seed(0)
    model = zfnet(num_classes=5, width=0.125, head_pool=1).eval()
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[:, 16:48, 16:48] = True
    probe = Probe(
        torch.randn(3, 3, 64, 64, generator=g),
        torch.tensor([0, 3, 4]),
        masks,
        (0.5,) * 3,
        (0.25,) * 3,
        ["a", "b", "c", "d", "e"],
    )
    return model, probe


def run_all(rank: int, world_size: int, all_gather) -> dict:
    model, probe = inputs()
    ctx = SimpleNamespace(
        rank=rank,
        world_size=world_size,
        all_gather=all_gather,
        autocast=contextlib.nullcontext,
        epoch=0,
        device=torch.device("cpu"),
        trainer=None,
    )
    out = {}
    for cb in callbacks():
        with torch.enable_grad() if cb.grad else torch.no_grad():
            result = cb.analyze(model, probe, ctx)
        if result is None:
            out[cb.name] = None
            continue
        figures = {
            k: (v.image if isinstance(v, Figure) else np.asarray(v))
            for k, v in result.figures.items()
        }
        out[cb.name] = {"scalars": result.scalars, "figures": figures}
    return out


def _worker(rank: int, world_size: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    calls = []

    def all_gather(local: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(local.shape))
        parts = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    try:
        torch.save(
            {"results": run_all(rank, world_size, all_gather), "calls": calls}, f"{out}.{rank}"
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_give_the_single_rank_results(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = run_all(0, 1, None)
    finally:
        torch.set_num_threads(threads)
    out = str(tmp_path / "split")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'init'}", out), nprocs=2, join=True)
    first, second = (torch.load(f"{out}.{r}", weights_only=False) for r in range(2))
    assert all(v is None for v in second["results"].values()), "only rank 0 draws"
    # each rank computed 2 of the 3 images (or units): the shares were gathered
    assert (2, 5) in first["calls"] and first["calls"] == second["calls"]
    for name, single in alone.items():
        split = first["results"][name]
        assert split["scalars"].keys() == single["scalars"].keys()
        for key, value in single["scalars"].items():
            assert split["scalars"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (name, key)
        for key, image in single["figures"].items():
            diff = np.abs(split["figures"][key].astype(int) - image.astype(int))
            assert split["figures"][key].shape == image.shape and diff.mean() < 0.05, (name, key)
