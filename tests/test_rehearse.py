"""``make rehearse``: the ImageNet recipe on a written shapes folder with masks, 2 CPU processes,
every analysis, and the cost of each part printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zflight.data.masks import load_mask, mask_folder, mask_path
from zflight.rehearse import main, parse_args


def test_keys_are_checked_and_the_rest_go_to_training():
    cfg, rest = parse_args(["epochs=2", "width=1.0", "callbacks.budget=0.02", "masks=false"])
    assert (cfg.epochs, cfg.width, cfg.masks, rest) == (2, 1.0, False, ["callbacks.budget=0.02"])
    for bad in (["size=64"], ["classes=9"], ["epochs=0"], ["devices=two"], ["oops"]):
        assert main(bad) == 2


def test_written_folder_has_a_mask_for_each_image(tmp_path):
    from zflight.data.export import write_image_folder

    counts = write_image_folder(
        tmp_path, num_classes=2, train_per_class=1, val_per_class=2, size=224
    )
    assert counts == {"train": 2, "val": 4}
    masks = mask_folder(tmp_path)
    images = sorted((tmp_path / "val").glob("*/*.JPEG"))
    assert len(images) == 4 and masks is not None
    for image in images:
        mask = load_mask(mask_path(str(image), tmp_path / "val", masks), 224, 256)
        assert mask.shape == (224, 224) and 0 < mask.float().mean() < 0.6


@pytest.mark.slow
def test_small_rehearsal_runs_every_analysis_and_prints_the_costs(tmp_path):
    args = [
        f"out={tmp_path / 'r'}",
        "classes=2",
        "train_per_class=4",
        "val_per_class=2",
        "size=224",
        "width=0.125",
        "batch_size=2",
        "callbacks.actmax.steps=2",
        "callbacks.actmax.units_per_layer=2",
        "callbacks.occlusion.score_probes=4",
        "callbacks.heatmaps.score_probes=4",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "zflight.rehearse", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    names = ("deconv", "evolution", "occlusion", "filters", "heatmaps", "actmax", "invariance")
    assert "wrote 8 training and 4 validation 224 px JPEGs with masks" in out
    table = out[out.index("what each part cost:") :]
    for name in (*names, "total"):
        assert f"\n  {name} " in table, table
    rows = [json.loads(x) for x in (tmp_path / "r/run/viz/scalars.jsonl").read_text().splitlines()]
    keys = {r["key"] for r in rows}
    assert {f"cost/{n}/forwards" for n in names} <= keys
    assert "occlusion/pointing_game" in keys and "heatmaps/pointing_game" in keys, "masks score"
    assert (tmp_path / "r/run/viz/cost/ledger/epoch_0000.png").exists()
