"""The VisualizationCallback rules: schedule, probe set, rank discipline, isolation, sinks, state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from tests.conftest import tiny_overrides
from tests.helpers import Meddling
from zflight.callbacks.base import VisualizationCallback, isolated
from zflight.callbacks.results import Probe
from zflight.data import ShapesDataset
from zflight.models import create_model
from zflight.train import train

REC = "callbacks.rec._target_=tests.helpers.Recording"


def fake_trainer(epoch, max_epochs=10, sanity=False, fast_dev_run=False, fn="fit"):
    return SimpleNamespace(
        current_epoch=epoch,
        max_epochs=max_epochs,
        sanity_checking=sanity,
        fast_dev_run=fast_dev_run,
        state=SimpleNamespace(fn=fn),
    )


def test_schedule():
    cb = VisualizationCallback(every_n_epochs=3, on_first_epoch=True, on_last_epoch=True)
    assert [e for e in range(10) if cb._should_run(fake_trainer(e))] == [0, 2, 5, 8, 9]
    plain = VisualizationCallback(every_n_epochs=3, on_last_epoch=False)
    assert [e for e in range(10) if plain._should_run(fake_trainer(e))] == [2, 5, 8]
    assert not cb._should_run(fake_trainer(2, sanity=True))
    assert not cb._should_run(fake_trainer(2, fast_dev_run=True))
    assert cb._should_run(fake_trainer(1, fn="validate")), "post-hoc validation always runs"
    with pytest.raises(ValueError, match="every_n_epochs"):
        VisualizationCallback(every_n_epochs=0)


def test_probe_is_seeded_and_fixed():
    ds = ShapesDataset(50, image_size=64)
    a, b = Probe.from_dataset(ds, 6, seed=1), Probe.from_dataset(ds, 6, seed=1)
    assert (
        a.indices == b.indices and torch.equal(a.images, b.images) and a.masks.shape == (6, 64, 64)
    )
    assert Probe.from_dataset(ds, 6, seed=2).indices != a.indices
    assert torch.equal(a.labels, ds.labels[a.indices])


def test_runs_on_schedule_and_writes_pngs_gallery_scalars(tmp_path):
    r = train(
        tiny_overrides(
            tmp_path / "run",
            "trainer.max_epochs=4",
            REC,
            "callbacks.rec.every_n_epochs=2",
            "callbacks.rec.on_last_epoch=false",
        )
    )
    viz = Path(r["run_dir"]) / "viz"
    assert sorted(p.name for p in (viz / "recording" / "probe").iterdir()) == [
        "epoch_0001.png",
        "epoch_0003.png",
    ]
    png = Image.open(viz / "recording" / "first" / "epoch_0001.png")
    assert png.size == (64, 64) and png.mode == "RGB"
    html = (viz / "index.html").read_text()
    data = "".join(p.read_text() for p in (viz / "gallery").glob("*.js"))  # the page's data files
    assert '<script src="gallery/0000.js">' in html and '<a href="recording/probe/">' in html
    assert "recording/probe/epoch_0003.png" in data and "recording/probe/epoch_0001.png" in data
    rows = [json.loads(line) for line in (viz / "scalars.jsonl").read_text().splitlines()]
    assert [(x["epoch"], x["value"]) for x in rows if x["key"] == "recording/gathered_sum"] == [
        (1, 3.0),
        (3, 3.0),
    ]
    checksums = {x["value"] for x in rows if x["key"] == "recording/probe_checksum"}
    assert len(checksums) == 1, "the same probe images every epoch"


def test_error_is_isolated_and_state_restored(tmp_path):
    r = train(tiny_overrides(tmp_path / "run", "callbacks.m._target_=tests.helpers.Meddling"))
    assert r["epochs"] == 2, "training went on despite the failing callback"
    with pytest.raises(RuntimeError, match="analysis exploded"):
        train(
            tiny_overrides(
                tmp_path / "strict",
                "callbacks.m._target_=tests.helpers.Meddling",
                "callbacks.m.strict=true",
            )
        )


def test_isolated_restores_modes_hooks_grads_and_rng():
    model = create_model("zfnet", num_classes=8, width=0.125, head_pool=1)
    model.train()
    model.classifier.eval()
    probe = Probe.from_dataset(ShapesDataset(4, image_size=64), 2, seed=0)
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    cb = Meddling()
    with pytest.raises(RuntimeError), isolated(model):
        cb.analyze(model, probe, None)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert not model.features.conv1._forward_hooks
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_same_weights_with_and_without_callbacks(tmp_path):
    a = train(tiny_overrides(tmp_path / "a"))
    b = train(
        tiny_overrides(
            tmp_path / "b",
            REC,
            "callbacks.m._target_=tests.helpers.Meddling",
            "callbacks.m.fail=false",
        )
    )
    sa = torch.load(a["last_ckpt"], weights_only=False)["state_dict"]
    sb = torch.load(b["last_ckpt"], weights_only=False)["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_state_survives_resume(tmp_path):
    run = tmp_path / "run"
    train(tiny_overrides(run, "trainer.max_epochs=2", "optim.schedule=none", REC))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["callbacks"]["Recording[recording]"]["history"] == [0, 1]
    train(
        tiny_overrides(
            run,
            "trainer.max_epochs=3",
            "optim.schedule=none",
            REC,
            f"resume={run / 'checkpoints' / 'last.ckpt'}",
        )
    )
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["callbacks"]["Recording[recording]"]["history"] == [0, 1, 2]


def test_images_reach_wandb_and_tensorboard(tmp_path):
    r = train(tiny_overrides(tmp_path / "w", REC, "logger=wandb", "trainer.max_epochs=1"))
    media = list(Path(r["run_dir"]).glob("wandb/offline-run-*/files/media/images/recording/*.png"))
    assert len(media) == 8 + 1, "eight captioned probe images and the single first image"
    r = train(tiny_overrides(tmp_path / "t", REC, "logger=tensorboard", "trainer.max_epochs=1"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(Path(r["run_dir"]) / "tensorboard")).Reload()
    assert "recording/first" in ev.Tags()["images"] and "recording/probe/7" in ev.Tags()["images"]


@pytest.mark.slow
def test_ddp_rank_zero_writes_once_and_no_hang(tmp_path):
    run = tmp_path / "ddp"
    p = subprocess.run(
        [sys.executable, "-m", "zflight.train", *tiny_overrides(run, "trainer.devices=2", REC)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "viz" / "scalars.jsonl").read_text().splitlines()]
    gathered = [x["value"] for x in rows if x["key"] == "recording/gathered_sum"]
    assert gathered == [9.0, 9.0], (
        "one row per epoch, rank 0 only; all_gather saw both ranks (3*1 + 3*2)"
    )
    assert sorted(p.name for p in (run / "viz" / "recording" / "probe").iterdir()) == [
        "epoch_0000.png",
        "epoch_0001.png",
    ]
