"""The ablation entry point: arguments, training overrides, claim counting and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zflight.callbacks.filter_health import FilterHealth
from zflight.callbacks.renorm import FilterRenorm


def test_ablation_arguments_and_overrides_are_valid_configs(tmp_path):
    from zflight import ablation
    from zflight.config import ConfigError, load_config
    from zflight.run.build import build_callbacks

    cfg, extra = ablation.parse_args(["epochs=3", "seeds=2", "renorm=zfnet", "logger=none"])
    assert (cfg.epochs, cfg.seeds, cfg.renorm, extra) == (3, 2, "zfnet", ["logger=none"])
    for bad in (["renorm=sometimes"], ["epochs"], ["epochs=many"], ["seeds=0"]):
        with pytest.raises(ConfigError):
            ablation.parse_args(bad)
    for arm, has_renorm in (("alexnet_style", False), ("zfnet", True)):
        train_cfg = load_config(ablation.arm_overrides(arm, 1, cfg, tmp_path / arm, extra))
        got = (train_cfg.model.name, train_cfg.seed, train_cfg.trainer.max_epochs)
        assert got == (arm, 1, 3)
        assert (train_cfg.optim.name, train_cfg.optim.momentum) == ("sgd", 0.9)
        assert train_cfg.data.fine_texture is True and train_cfg.data.train_size == 16000
        assert train_cfg.logger.name == "none"  # the user's override comes last and wins
        kinds = [type(c) for c in build_callbacks(train_cfg)]
        assert kinds == ([FilterHealth, FilterRenorm] if has_renorm else [FilterHealth])
    both, _ = ablation.parse_args([])
    for arm in ("alexnet_style", "zfnet"):  # the default: the same RMS rule on both arms
        kinds = [
            type(c)
            for c in build_callbacks(
                load_config(ablation.arm_overrides(arm, 0, both, tmp_path, []))
            )
        ]
        assert kinds == [FilterHealth, FilterRenorm]


def test_claim_outcomes_count_seeds_and_say_when_untestable():
    from zflight.ablation_report import claim_outcome

    # (AlexNet-style, ZFNet) per seed
    assert claim_outcome([(0.1, 0.3), (0.2, 0.1), (0.1, 0.4)], "zfnet") == (2, 3, None)
    assert claim_outcome([(0.3, 0.1), (0.2, 0.2)], "alexnet_style") == (1, 2, None)  # a tie fails
    holds, n, reason = claim_outcome([(0.0, 0.0), (0.0, 0.0)], "alexnet_style")
    assert (holds, n) == (0, 2) and "no such filter in either arm" in reason
    assert claim_outcome([(math.nan, 0.2)], "zfnet")[2].startswith("not measured")


def fake_run(run: Path, finals: dict[str, float], acc: float) -> dict:
    """A run directory with two epochs of filter scalars (the last one = ``finals``) and top-1."""
    (run / "viz" / "filters" / "conv1" / "filters").mkdir(parents=True)
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(
        run / "viz" / "filters" / "conv1" / "filters" / "epoch_0001.png"
    )
    with open(run / "viz" / "scalars.jsonl", "w") as f:
        for epoch, scale in ((0, 2.0), (1, 1.0)):  # the report must take the last epoch
            for key, v in finals.items():
                row = {"epoch": epoch, "step": epoch, "key": f"filters/{key}", "value": v * scale}
                f.write(json.dumps(row) + "\n")
    (run / "csv").mkdir()
    (run / "csv" / "metrics.csv").write_text(f"epoch,step,val/acc1\n0,9,0.5\n1,19,{acc}\n")
    return {"run_dir": run, "val_acc1": acc, "seconds": 1.0}


def test_ablation_report_counts_each_claim_over_seeds(tmp_path):
    from zflight import ablation
    from zflight.ablation_report import read_accuracy, write_report

    base = {"conv1/dead": 0.0, "conv1/untrained": 0.0, "conv1/aliased": 0.0, "conv2/gridding": 2.0}
    results = {}
    for seed, (mid_a, mid_z, grid_a, grid_z, acc_a, acc_z) in enumerate(
        [(0.2, 0.6, 0.5, 0.3, 0.8, 0.9), (0.3, 0.5, 0.4, 0.6, 0.85, 0.84)]
    ):
        results[seed] = {
            "alexnet_style": fake_run(
                tmp_path / f"s{seed}" / "alexnet_style",
                {**base, "conv1/band_mid": mid_a, "conv2/gridding_rel": grid_a},
                acc_a,
            ),
            "zfnet": fake_run(
                tmp_path / f"s{seed}" / "zfnet",
                {**base, "conv1/band_mid": mid_z, "conv2/gridding_rel": grid_z},
                acc_z,
            ),
        }
    assert read_accuracy(tmp_path / "s0" / "zfnet") == [(0, 0.5), (1, 0.9)]
    cfg, _ = ablation.parse_args(["seeds=2", "epochs=2"])
    text = write_report(tmp_path, cfg, [], results, 60.0).read_text()
    assert "- (a) more mid-frequency first-layer filters: **holds on 2 of 2 seeds** " in text
    assert "(conv1 mid-band share: ZFNet 0.550 ± 0.071, AlexNet-style 0.250 ± 0.071)" in text
    assert (
        "- (b) fewer dead first-layer filters (dead or untrained: no structure): **not testable here: no such filter in either arm on any seed**"
        in text
    )
    assert "- (c) fewer aliased first-layer filters: **not testable here" in text
    assert (
        "- (d) less gridding in layer 2 (relative to each net's start): **holds on 1 of 2 seeds**"
        in text
    )
    assert "- (e) better accuracy: **holds on 1 of 2 seeds**" in text
    assert "| 1 | ZFNet | 0.840 | 0.000 | 0.000 | 0.000 | 0.000 | 0.500 |" in text
    for png in ("filters.png", "curves.png"):
        assert Image.open(tmp_path / png).size[0] > 100


@pytest.mark.slow
def test_ablation_end_to_end_on_a_tiny_budget(tmp_path):
    from zflight import ablation
    from zflight.ablation_report import read_scalars

    path = ablation.run_ablation(
        [
            f"out={tmp_path / 'abl'}",
            "seeds=1",
            "epochs=2",
            "train_size=256",
            "data.val_size=64",
            "data.batch_size=64",
            "data.cache_dir=null",
        ]
    )
    text = path.read_text()
    assert "(e) better accuracy: **holds on" in text and "| 0 | ZFNet |" in text
    for arm in ablation.ARMS:
        series = read_scalars(tmp_path / "abl" / "seed0" / arm)
        assert [e for e, _ in series["conv1/dead"]] == [0, 1]
        assert "conv2/gridding_rel" in series
