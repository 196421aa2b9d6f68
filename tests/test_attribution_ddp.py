"""The attribution checks under DDP: two CPU processes split the curves and the sanity check's
occlusion, agree, and write every score once."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import tiny_overrides
from tests.test_train import _run


@pytest.mark.slow
def test_two_processes_write_scores_baselines_and_checks_once(tmp_path):
    pytest.importorskip("captum.attr")
    run = tmp_path / "ddp"
    callbacks = []
    for name, target in (
        ("occlusion", "occlusion.Occlusion"),
        ("heatmaps", "heatmaps.HeatMaps"),
        ("ig", "captum.CaptumAttribution"),
    ):
        callbacks += [
            f"callbacks.{name}._target_=zflight.callbacks.{target}",
            f"callbacks.{name}.strict=true",
            f"callbacks.{name}.score_probes=6",
            f"callbacks.{name}.num_probes=3",
            f"callbacks.{name}.faithfulness_steps=3",
            f"callbacks.{name}.sanity_probes=2",
        ]
    callbacks.append("callbacks.ig.attribute_args.n_steps=4")
    p = _run(
        [
            sys.executable,
            "-m",
            "zflight.train",
            *tiny_overrides(run, "trainer.devices=2", *callbacks),
        ]
    )
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in (run / "viz" / "scalars.jsonl").read_text().splitlines()]
    keys = [(r["key"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys)), "every score written once, by rank 0"
    for prefix in ("occlusion/", "heatmaps/", "heatmaps/saliency_", "integrated_gradients/"):
        for key in (
            "pointing_game_baseline_centre",
            "mass_in_mask_margin",
            "deletion_auc_baseline_random",
            "insertion_margin",
            "sanity_spearman",
        ):
            assert (prefix + key, 1) in keys, prefix + key
    for name in ("occlusion", "heatmaps", "integrated_gradients"):
        for figure in ("faithfulness", "sanity"):
            assert (run / "viz" / name / figure / "epoch_0001.png").exists()
