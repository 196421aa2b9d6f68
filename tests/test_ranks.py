"""Rank agreement of visual callbacks: a failure on one rank is skipped on every rank, never a hang;
non-finite weights are refused before drawing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import tiny_overrides
from zflight.callbacks.base import VisualizationCallback
from zflight.callbacks.ranks import GatherMismatch, RankAgreement
from zflight.models import create_model


def two_ranks(peer: torch.Tensor | None = None, peer_ok: bool = True):
    """A gather for rank 0 of two whose peer sends ``peer`` (or fails); counts the calls."""
    calls = []

    def gather(status: torch.Tensor) -> torch.Tensor:
        other = status.clone()
        other[0] = int(not peer_ok)
        if peer is not None:
            other[2] = peer.ndim
            other[3 : 3 + peer.ndim] = torch.tensor(peer.shape)
        calls.append(status)
        return torch.stack([status, other])

    return gather, calls


def test_agreement_names_the_failed_rank_and_stops_calling():
    gather, calls = two_ranks(peer_ok=False)
    agreement = RankAgreement(gather, 2, torch.device("cpu"))
    assert agreement.agree(True, torch.ones(2, 3)) == [1]
    assert agreement.agree(True) == [1] and len(calls) == 1, "settled: no further collective"
    gather, calls = two_ranks()
    agreement = RankAgreement(gather, 2, torch.device("cpu"))
    assert agreement.agree(True, torch.ones(2, 3)) == [] and agreement.agree(True) == []
    assert len(calls) == 2
    assert agreement.agree(False) == [0] and len(calls) == 3


def test_agreement_refuses_a_gather_of_unequal_shapes():
    gather, calls = two_ranks(peer=torch.ones(3, 3))
    agreement = RankAgreement(gather, 2, torch.device("cpu"))
    with pytest.raises(GatherMismatch, match=r"rank 0 \(2, 3\) float32, rank 1 \(3, 3\) float32"):
        agreement.agree(True, torch.ones(2, 3))
    assert agreement.agree(True) == [0, 1] and len(calls) == 1


def test_one_rank_makes_no_collective():
    agreement = RankAgreement(lambda t: pytest.fail("no gather with one rank"), 1, "cpu")
    assert agreement.agree(True, torch.ones(2)) == [] and agreement.agree(False) == [0]


class Counting(VisualizationCallback):
    name = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def probe(self, trainer, device):
        return None

    def analyze(self, model, probe, ctx):
        self.calls += 1


def _one_rank(model):
    trainer = SimpleNamespace(
        current_epoch=3,
        world_size=1,
        global_rank=0,
        is_global_zero=True,
        strategy=SimpleNamespace(all_gather=lambda t: t),
    )
    return trainer, SimpleNamespace(model=model, device=torch.device("cpu"))


def test_nonfinite_weights_are_refused_with_one_line():
    model = create_model("zfnet", num_classes=4, width=0.125, head_pool=1)
    cb = Counting()
    cb._run(*_one_rank(model))
    assert cb.calls == 1 and cb.logged_epochs == [3], "finite weights are analysed"
    with torch.no_grad():
        model.features.conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning) as caught:
        cb._run(*_one_rank(model))
    (w,) = caught
    assert str(w.message) == (
        "visual callback 'counting' skipped at epoch 3: non-finite weights "
        "(features.conv1.weight); nothing drawn."
    )
    assert cb.calls == 1 and cb.logged_epochs == [3], "nothing analysed, nothing logged"


FAILING = "tests.helpers.FailingOnRank"


def run_train(args: list[str]) -> subprocess.CompletedProcess:
    """``python -m zflight.train *args`` in a subprocess, output captured, killed after 120 s."""
    return subprocess.run(
        [sys.executable, "-m", "zflight.train", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=Path(__file__).resolve().parent.parent,
    )


@pytest.mark.slow
def test_ddp_failure_on_one_rank_is_skipped_on_every_rank(tmp_path):
    run = tmp_path / "ddp"
    args = tiny_overrides(
        run,
        "trainer.devices=2",
        "callbacks.rec._target_=tests.helpers.Recording",
        *[
            f"callbacks.{key}.{arg}"
            for key, where in (("fa", "analyze"), ("fh", "hook"), ("fs", "shape"))
            for arg in (f"_target_={FAILING}", f"where={where}", f"name=failing_{where}")
        ],
    )
    p = run_train(args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("final validation accuracy") == 1, "training completed"
    for epoch in (0, 1):
        for where in ("analyze", "hook"):
            # the failing rank prints its own error and traceback; rank 0 names the rank
            assert (
                f"[rank 1] visual callback 'failing_{where}' failed at epoch {epoch}; skipped on "
                "every rank for this epoch; training continues." in p.stderr
            )
            assert (
                f"visual callback 'failing_{where}' failed at epoch {epoch} on rank 1 (its error "
                "is printed by that rank)" in p.stderr
            )
        assert (
            "visual callback 'failing_shape': all_gather got different shapes or dtypes on the "
            "ranks (rank 0 (2, 3) float32, rank 1 (3, 3) float32)" in p.stderr
        )
    assert p.stderr.count("RuntimeError: analysis failed on rank 1") == 2
    assert p.stderr.count("RuntimeError: hook failed on rank 1") == 2
    rows = [json.loads(line) for line in (run / "viz" / "scalars.jsonl").read_text().splitlines()]
    assert not [r for r in rows if r["key"].startswith("failing")], "no rank drew a failed epoch"
    gathered = [(r["epoch"], r["value"]) for r in rows if r["key"] == "recording/gathered_sum"]
    assert gathered == [(0, 9.0), (1, 9.0)], "the collectives after a failure still line up"


@pytest.mark.slow
def test_ddp_strict_failure_on_one_rank_raises_on_every_rank(tmp_path):
    args = tiny_overrides(
        tmp_path / "ddp",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        f"callbacks.fa._target_={FAILING}",
        "callbacks.fa.strict=true",
    )
    p = run_train(args)
    assert p.returncode != 0
    assert "RuntimeError: analysis failed on rank 1" in p.stderr
    assert "visual callback 'failing' failed at epoch 0 on rank 1" in p.stderr, "rank 0 raised too"
