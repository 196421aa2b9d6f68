"""Occlusion maps split across two gloo processes equal the single-process maps."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zflight.analysis.occlusion import occlusion_maps
from zflight.models import zfnet

KW = dict(size=16, stride=8, fill="blur")  # 7 x 7 positions: 49 per image, an odd count


def _inputs() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = zfnet(num_classes=5, width=0.125, head_pool=2).eval()
    return model, torch.randn(1, 3, 64, 64), torch.tensor([2])


def _worker(rank: int, world_size: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    shares = []

    def all_gather(local: torch.Tensor) -> torch.Tensor:
        shares.append(local.shape[0])
        parts = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    try:
        model, images, labels = _inputs()
        maps = occlusion_maps(
            model, images, labels, rank=rank, world_size=world_size, all_gather=all_gather, **KW
        )
        torch.save(
            {"prob": maps.prob, "label": maps.label, "feature": maps.feature, "shares": shares},
            f"{out}.{rank}",
        )
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_single_process_maps(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, images, labels = _inputs()
        single = occlusion_maps(model, images, labels, **KW)
    finally:
        torch.set_num_threads(threads)
    out = str(tmp_path / "maps")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'init'}", out), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        assert got["shares"] == [25]  # ceil(49 / 2) positions each, gathered once
        assert torch.allclose(got["prob"], single.prob, atol=1e-6)
        assert torch.equal(got["label"], single.label)
        assert torch.allclose(got["feature"], single.feature, rtol=1e-5, atol=1e-5)
