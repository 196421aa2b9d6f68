"""Post-hoc CLI: run callbacks on a saved checkpoint without training, in a folder of its own."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_overrides
from zflight.config import ConfigError
from zflight.train import train
from zflight.visualize import default_out, main, visualize

REC = "callbacks.rec._target_=tests.helpers.Recording"


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run with the evolution strip (state in the checkpoint) and Grad-CAM (gradients)."""
    run = tmp_path_factory.mktemp("vis") / "run"
    train(
        tiny_overrides(
            run,
            "callbacks.evolution._target_=zflight.callbacks.deconv.FeatureEvolution",
            "callbacks.evolution.layers=[conv1]",
            "callbacks.evolution.features_per_layer=2",
            "callbacks.heatmaps._target_=zflight.callbacks.heatmaps.HeatMaps",
            "callbacks.heatmaps.num_probes=2",
            "callbacks.heatmaps.background_output=false",
            "callbacks.evolution.background_output=false",
        )
    )
    return run


def test_visualize_leaves_the_run_untouched_and_writes_its_own_folder(trained, capsys):
    before = hashes(trained)
    gallery = visualize([f"ckpt={trained / 'checkpoints' / 'last.ckpt'}", "trainer.progress=false"])
    assert hashes(trained) == before, "every file of the training run is byte-identical"
    out = gallery.parent.parent
    assert out.parent == trained.parent and out.name.startswith("run-visualize-")
    assert "pictures:" in capsys.readouterr().out
    # gradient-based: Grad-CAM ran (training wrote epoch 1; the post-hoc run names its PNG alike)
    assert (out / "viz" / "heatmaps").is_dir() and list((out / "viz" / "heatmaps").rglob("*.png"))
    # the evolution strip continues the history saved in the checkpoint: epochs 0 and 1 again
    (trained_strip,) = (trained / "viz" / "evolution").rglob("epoch_0001.png")
    (post_strip,) = (out / "viz" / "evolution").rglob("epoch_0001.png")
    a, b = np.asarray(Image.open(trained_strip)), np.asarray(Image.open(post_strip))
    assert a.shape == b.shape, "two epoch columns, as at the end of training"
    assert np.array_equal(a, b), "same weights, probes and history: the same picture"
    scalars = [json.loads(x) for x in (out / "viz" / "scalars.jsonl").read_text().splitlines()]
    assert {x["key"] for x in scalars} >= {"heatmaps/pointing_game"}


def test_visualize_checkpoint_writes_pngs_and_gallery(trained, tmp_path):
    out = tmp_path / "post"
    ckpt = trained / "checkpoints" / "best.ckpt"
    gallery = visualize([f"ckpt={ckpt}", f"out={out}", "callbacks=none", REC])
    assert gallery == out / "viz" / "index.html" and gallery.exists()
    epoch = torch.load(ckpt, weights_only=False)["epoch"]  # saved at that epoch's validation
    assert (out / "viz" / "recording" / "probe" / f"epoch_{epoch:04d}.png").exists()
    assert (out / "config.yaml").read_text().startswith(f"# visualize ckpt={ckpt}")
    # the gallery's header: the checkpoint's validation accuracy, as training measured it
    (row,) = [json.loads(x) for x in (out / "viz" / "metrics.jsonl").read_text().splitlines()]
    trained_rows = (trained / "viz" / "metrics.jsonl").read_text().splitlines()
    at_training = next(r for r in map(json.loads, trained_rows) if r["epoch"] == epoch)
    assert row["epoch"] == epoch and "train/loss" not in row
    assert row["val/acc1"] == pytest.approx(at_training["val/acc1"], abs=1e-6)
    assert '"val/acc1"' in gallery.read_text()


def test_visualize_exits_1_when_an_analysis_fails(trained, tmp_path, capsys):
    args = [f"ckpt={trained / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path / 'o'}"]
    meddling = "callbacks.bad._target_=tests.helpers.Meddling"
    assert main([*args, "callbacks=none", REC, meddling]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: 1 of 2 analyses failed (meddling)")


def test_visualize_bad_inputs_exit_2_with_one_line(trained, tmp_path, capsys):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x80not a checkpoint" * 50)
    last = trained / "checkpoints" / "last.ckpt"
    cases = {
        f"ckpt={tmp_path / 'missing.ckpt'}": "no such file",
        f"ckpt={garbage}": "not a readable checkpoint",
        f"ckpt={last} model.width=0.25": "was trained with model.width=0.125",
        f"ckpt={last} out={trained / 'viz'}": "is inside the training run",
    }
    before = hashes(trained)
    for args, says in cases.items():
        assert main(args.split()) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, (args, err)
    assert hashes(trained) == before
    with pytest.raises(ConfigError, match="needs ckpt=PATH"):
        visualize([])


def test_default_out_is_a_new_folder_even_within_one_second(tmp_path, monkeypatch):
    monkeypatch.setattr("zflight.visualize.time.strftime", lambda fmt: "20260101-000000")
    run = tmp_path / "run"
    first = default_out(run)
    assert first == tmp_path / "run-visualize-20260101-000000"
    first.mkdir()
    second = default_out(run)
    assert second == tmp_path / "run-visualize-20260101-000000-2"
    second.mkdir()
    assert default_out(run).name == "run-visualize-20260101-000000-3"
