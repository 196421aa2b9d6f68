"""The cost ledger is true: forward passes it reports equal those a counting hook sees on a
constructed model; shares, the epoch line and the budget follow from closed forms."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from zflight.analysis.cost import CountFlops, forward_flops, training_forwards
from zflight.callbacks.base import VisualizationCallback
from zflight.callbacks.budget import stretched
from zflight.callbacks.costs import COSTS, ledger_rows, ledger_scalars
from zflight.callbacks.results import Probe


def constructed() -> nn.Module:
    """conv 3->4 (3x3) on 8x8 -> 6x6, ReLU, linear 144 -> 5: 3888 + 720 multiply-adds an image."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5)).eval()


def counting_hook(model: nn.Module) -> list[int]:
    """Images through the model's forward, counted by a forward hook."""
    seen: list[int] = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    return seen


class Passes(VisualizationCallback):
    """Runs the model on the probe images ``times`` times; with ``grad``, a saliency-like
    backward to the input after each (weights frozen)."""

    name = "passes"

    def __init__(self, times: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.times = times

    def probe(self, trainer, device):
        g = torch.Generator().manual_seed(1)
        return Probe(torch.randn(6, 3, 8, 8, generator=g), torch.arange(6) % 5, None)

    def analyze(self, model, probe, ctx):
        for _ in range(self.times):
            if self.grad:
                for p in model.parameters():
                    p.requires_grad_(False)
                x = probe.images.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(model(x).sum(), x)
            else:
                model(probe.images)


def one_rank(model: nn.Module):
    trainer = SimpleNamespace(
        current_epoch=0,
        world_size=1,
        global_rank=0,
        is_global_zero=True,
        strategy=SimpleNamespace(all_gather=lambda t: t),
    )
    return trainer, SimpleNamespace(model=model, device=torch.device("cpu"))


def test_forward_flops_is_twice_the_multiply_adds():
    assert forward_flops(constructed(), (3, 8, 8)) == 2 * (6 * 6 * 4 * 27 + 144 * 5)


@pytest.mark.parametrize("grad", [False, True])
def test_ledger_forwards_equal_the_images_a_forward_hook_counts(grad):
    model = constructed()
    seen = counting_hook(model)
    COSTS.take()
    cb = Passes(times=3, grad=grad)
    cb._run(*one_rank(model))
    cost = COSTS.take()["passes"]
    assert sum(seen) == 18  # 3 passes of 6 images; the ledger's own unit pass is not seen
    # a backward with frozen weights costs what the forward does: the input's gradient only
    assert cost.forwards == pytest.approx(sum(seen) * (2 if grad else 1), rel=1e-12)
    assert cost.seconds > 0


def test_count_flops_counts_functional_and_module_calls_alike():
    model = constructed()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), CountFlops() as by_module:
        model(x)
    conv, lin = model[0], model[3]
    with torch.no_grad(), CountFlops() as by_function:
        h = torch.nn.functional.conv2d(x, conv.weight, conv.bias).relu().flatten(1)
        h @ lin.weight.T + lin.bias
    assert by_module.flops == by_function.flops == 2 * forward_flops(model, (3, 8, 8))


def test_rows_shares_and_scalars_follow_from_the_ranks():
    # 2 ranks, 2 callbacks: (seconds, forwards)
    per_rank = torch.tensor([[[1.0, 30.0], [2.0, 10.0]], [[1.5, 20.0], [0.5, 10.0]]])
    train = training_forwards(1000)
    assert train == 3000
    rows = ledger_rows(["a", "b"], per_rank, train, train_seconds=10.0)
    a, b = rows
    assert (a.seconds, a.forwards, a.forwards_all) == (1.5, 30.0, 50.0)
    assert a.share == pytest.approx(0.01) and a.time_share == pytest.approx(0.15)
    assert (b.seconds, b.forwards, b.share) == (2.0, 10.0, pytest.approx(10 / 3000))
    scalars = ledger_scalars(rows, train, 10.0)
    assert scalars["total/forwards"] == 40.0 and scalars["total/forwards_all"] == 70.0
    assert scalars["total/share"] == pytest.approx(40 / 3000)
    assert scalars["total/time_share"] == pytest.approx(0.35)
    assert scalars["train/forwards"] == 3000 and "a/time_share" not in scalars


def test_no_share_without_a_training_epoch():
    rows = ledger_rows(["a"], torch.tensor([[[1.0, 5.0]]]), 0.0, 0.0)
    assert set(ledger_scalars(rows, 0.0, 0.0)) == {
        "a/seconds",
        "a/forwards",
        "total/seconds",
        "total/forwards",
        "total/forwards_all",
    }


def test_budget_stretches_every_interval_by_the_same_factor():
    intervals = {"occlusion": 1, "actmax": 2, "free": 1}
    costs = {"occlusion": 300.0, "actmax": 200.0, "free": 0.0}
    # per epoch 300 + 100 = 400 against 100 allowed: 4x, rounded up per callback
    new = stretched(intervals, costs, 100.0)
    assert new == {"occlusion": 4, "actmax": 8, "free": 1}
    assert sum(costs[n] / new[n] for n in new) <= 100.0
    assert stretched(intervals, costs, 400.0) == intervals, "within the budget: unchanged"
    new = stretched(intervals, costs, 130.0)  # 400 / 130 = 3.08: 4 and 7
    assert new == {"occlusion": 4, "actmax": 7, "free": 1}
