"""Post-hoc CLI: run callbacks on a saved checkpoint without training."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny_overrides
from zflight.config import ConfigError
from zflight.train import train
from zflight.visualize import main, visualize


def test_visualize_checkpoint_writes_pngs_and_gallery(tmp_path, capsys):
    r = train(tiny_overrides(tmp_path / "run"))
    out = tmp_path / "post"
    gallery = visualize(
        [
            f"ckpt={r['last_ckpt']}",
            f"out={out}",
            "callbacks.rec._target_=tests.helpers.Recording",
            "trainer.progress=false",
        ]
    )
    assert gallery == out / "viz" / "index.html" and gallery.exists()
    epoch = torch.load(r["last_ckpt"], weights_only=False)["epoch"]
    assert (out / "viz" / "recording" / "probe" / f"epoch_{epoch:04d}.png").exists(), (
        "named by the checkpoint's epoch"
    )
    rows = [json.loads(x) for x in (out / "viz" / "scalars.jsonl").read_text().splitlines()]
    assert {x["key"] for x in rows} >= {"recording/gathered_sum", "recording/probe_checksum"}
    assert "pictures:" in capsys.readouterr().out


def test_visualize_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="needs ckpt=PATH"):
        visualize([])
    assert main([f"ckpt={tmp_path / 'missing.ckpt'}"]) == 2
    assert "is not a file" in capsys.readouterr().err
