"""W&B lines up: an epoch's validation metrics, figures, callback scalars and tables share one step,
in one history row per epoch; the config is logged once, the learning rate as one curve, and W&B's
files stay in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.wandb_records import artifacts, config_keys, history
from zflight.callbacks.base import VisualizationCallback
from zflight.callbacks.results import Figure, Table, VizResult
from zflight.train import train

BATCHES = 4  # tiny(): 128 training images in batches of 32


class Tabler(VisualizationCallback):
    """A figure without caption, a pair with one caption, scalars (one NaN) and a table."""

    name = "tabler"

    def analyze(self, model, probe, ctx):
        red = np.zeros((6, 8, 3), np.uint8)
        red[..., 0] = 255
        rows = [[f, 1, 2.5 - f, int(probe.indices[f]), "cls", red] for f in range(3)]
        return VizResult(
            figures={"plain": red, "pair": [Figure(red), Figure(red[:4], "second")]},
            scalars={"score": ctx.epoch + 0.5, "broken": float("nan")},
            tables={
                "top": Table(["feature", "rank", "activation", "image", "class", "patch"], rows)
            },
        )


def _no_bare_constant(token: str) -> None:
    pytest.fail(f"scalars.jsonl holds a bare {token}, which strict JSON parsers reject")


def test_epoch_shares_one_step_with_captions_epoch_and_table(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR", "WANDB_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)  # restored after the test: the run sets them
    r = train(
        tiny(
            "logger=wandb",
            "callbacks.tab._target_=tests.test_wandb_steps.Tabler",
            "callbacks.tab.strict=true",
        )
    )
    run = next(Path(r["run_dir"]).glob("wandb/offline-run-*"))
    rows = history(next(run.glob("run-*.wandb")))
    # one history row per epoch holds everything of that epoch: W&B's media slider is the epoch
    assert [row["_step"] for row in rows] == [0, 1]
    assert [row["epoch"] for row in rows] == [0, 1]
    for row in rows:
        names = {k[0] if isinstance(k, tuple) else k for k in row}
        assert {"val/acc1", "train/loss", "optim/lr", "tabler/plain", "tabler/top"} <= names
        assert not any(n.startswith("lr-") for n in names), "one learning-rate curve"
    # the config once, nested as config.yaml has it (no flat copies of the module's arguments)
    config = config_keys(next(run.glob("run-*.wandb")))
    assert {"model", "data", "optim", "trainer", "seed"} <= config
    assert not config & {"lr", "optimizer", "num_classes", "schedule"}, config
    # Lightning logs an epoch's val/* before its last batch counts as stepped: 3 and 7
    val_steps = {row["epoch"]: row["trainer/global_step"] for row in rows if "val/acc1" in row}
    assert val_steps == {0: BATCHES - 1, 1: 2 * BATCHES - 1}
    ours = [
        row
        for row in rows
        if any(str(k[0] if isinstance(k, tuple) else k).startswith("tabler/") for k in row)
    ]
    logged = {}
    for row in ours:
        assert row["trainer/global_step"] == val_steps[row["epoch"]], row
        logged.setdefault(row["epoch"], set()).update(
            k[0] if isinstance(k, tuple) else k for k in row
        )
    for epoch in (0, 1):
        assert {
            "tabler/score",
            "tabler/broken",
            "tabler/plain",
            "tabler/pair",
            "tabler/top",
        } <= logged[epoch]
    captions = {
        (row["epoch"], k[0]): v for row in ours for k, v in row.items() if k[1:] == ("captions",)
    }
    assert captions[(1, "tabler/plain")] == ["tabler/plain, epoch 1"]
    assert captions[(1, "tabler/pair")] == ["tabler/pair, epoch 1 (1 of 2)", "second"]
    table_row = next(row for row in ours if row["epoch"] == 1 and ("tabler/top", "_type") in row)
    assert table_row[("tabler/top", "_type")] == "table-file"
    # W&B keeps a table's pictures in a run_table artifact (the run file's copy holds placeholders)
    tables = [a for a in artifacts(next(run.glob("run-*.wandb"))) if a.type == "run_table"]
    assert len(tables) == 2, "one table per epoch"
    files = {c.path: c.local_path for c in tables[-1].manifest.contents}
    # staged inside the run directory, so a copied run directory syncs with its tables
    run_dir = Path(r["run_dir"]).resolve()
    assert all(Path(p).resolve().is_relative_to(run_dir) for p in files.values()), files
    table = json.loads(Path(files["tabler/top.table.json"]).read_text())
    assert table["columns"] == ["feature", "rank", "activation", "image", "class", "patch"]
    assert [row[:3] for row in table["data"]] == [[0, 1, 2.5], [1, 1, 1.5], [2, 1, 0.5]]
    patches = [row[5] for row in table["data"]]
    assert all(p["_type"] == "image-file" and p["path"] in files for p in patches)

    # scalars.jsonl: the same steps, strict JSON (NaN as null with a note)
    lines = (Path(r["run_dir"]) / "viz" / "scalars.jsonl").read_text().splitlines()
    strict = [json.loads(line, parse_constant=_no_bare_constant) for line in lines]
    assert {(x["epoch"], x["step"]) for x in strict} == set(val_steps.items())
    broken = [x for x in strict if x["key"] == "tabler/broken"]
    assert broken and all(x["value"] is None and x["note"] == "nan" for x in broken)

    # metrics.jsonl (the gallery's header): one row per epoch at the same steps
    metrics = [
        json.loads(x)
        for x in (Path(r["run_dir"]) / "viz/metrics.jsonl").read_text().split("\n")
        if x
    ]
    assert [(m["epoch"], m["step"]) for m in metrics] == sorted(val_steps.items())
    assert metrics[-1]["val/acc1"] == pytest.approx(r["val_acc1"], abs=1e-7)
    assert all(0.5 < m["train/loss"] < 5.0 for m in metrics)  # cross-entropy over 8 classes, ~ln 8
