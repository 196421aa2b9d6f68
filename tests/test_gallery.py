"""The run gallery (viz/index.html): its data from disk, and the page in a real browser.

The browser tests drive Debian's headless Chromium (``.ci/run`` installs it): the page's
``#selftest`` mode clicks the epoch controls as a user would and writes what happened into the DOM,
which ``--dump-dom`` returns; a screenshot shows the latest picture is really drawn.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from zflight.callbacks.gallery import gallery_data, section_order
from zflight.callbacks.gallery_index import write_gallery
from zflight.callbacks.results import Figure, VizResult
from zflight.callbacks.sinks import write_outputs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # the small picture's colour at epochs 0, 1, 2


def make_run(run: Path, epochs: int = 3) -> Path:
    """A run directory as training leaves it: config, metrics, two figure keys, scalars (one NaN)."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        "model: {name: zfnet, width: 0.25}\ndata: {name: shapes, image_size: 64}\n"
        "optim: {name: adamw, lr: 0.003}\ntrainer: {max_epochs: 3}\nseed: 0\n"
    )
    viz = run / "viz"
    for epoch in range(epochs):
        trainer = SimpleNamespace(
            default_root_dir=str(run), current_epoch=epoch, global_step=10 * epoch + 10, loggers=[]
        )
        small = np.zeros((40, 60, 3), np.uint8)
        small[:] = COLOURS[epoch]
        wide = np.full((200, 1000, 3), 40 * epoch, np.uint8)
        scalars = {"score": 0.5 + 0.1 * epoch, "flaky": float("nan") if epoch == 1 else epoch}
        result = VizResult({"small": small, "wide": Figure(wide, "a wide one")}, scalars)
        write_outputs(trainer, "cb", result, background=False)
        row = {"epoch": epoch, "step": 10 * epoch + 9, "val/acc1": 0.3 + 0.2 * epoch}
        row.update({"val/acc5": 0.8 + 0.05 * epoch, "val/loss": 2 - 0.5 * epoch})
        row["train/loss"] = 2.1 - 0.6 * epoch
        with open(viz / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    write_outputs(trainer, "cb", VizResult(), background=False)  # updates the page
    write_gallery(viz, force=True)  # as the end of a run does: the last update is not debounced
    return viz


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=True
    )


def test_gallery_data_comes_from_disk(tmp_path):
    viz = make_run(tmp_path / "run")
    data = gallery_data(viz)
    assert data["run"] == "run"
    assert ["model", "zfnet"] in data["config"] and ["epochs", "3"] in data["config"]
    assert data["figures"]["cb/small"] == [
        [e, f"cb/small/epoch_{e:04d}.png", 60, 40, f"cb/small, epoch {e}"] for e in range(3)
    ]
    # a single captioned figure is stored as it is, its caption in the PNG's Description
    assert data["figures"]["cb/wide"][-1][2:] == [1000, 200, "a wide one"]
    for frames in data["figures"].values():  # sizes as on disk (the page reserves the space)
        assert all(Image.open(viz / path).size == (w, h) for _, path, w, h, _ in frames)
    assert data["scalars"]["cb/flaky"] == [[0, 0.0], [1, None], [2, 2.0]]
    assert [m["epoch"] for m in data["metrics"]] == [0, 1, 2]
    page = (viz / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no external links"
    assert 'loading: "lazy"' in page and '<script src="gallery/0000.js">' in page
    assert "cb/small/epoch_0002.png" in (viz / "gallery" / "0000.js").read_text()


@needs_chromium
def test_page_cards_epoch_control_and_charts_in_chromium(tmp_path):
    viz = make_run(tmp_path / "run")
    dom = chromium(tmp_path, "--dump-dom", (viz / "index.html").as_uri() + "#selftest").stdout
    found = re.search(r'<pre id="selftest">(.*?)</pre>', dom, re.DOTALL)
    assert found, "the page's script did not run: " + dom[:500]
    check = json.loads(html.unescape(found.group(1)))
    assert check["keys"] == ["cb/small", "cb/wide"]
    assert check["captions"] == ["cb/small, epoch 2", "a wide one"]  # none left without one
    steps = [(name, src) for name, src, _ in check["stepped"]["steps"]]
    assert steps == [
        ("latest", "cb/small/epoch_0002.png"),
        ("prev", "cb/small/epoch_0001.png"),
        ("slider 0", "cb/small/epoch_0000.png"),
        ("next", "cb/small/epoch_0001.png"),
    ]
    assert check["stepped"]["label"] == "epoch 1 (2 of 3)"
    charts = {c["key"]: c for c in check["charts"]}
    assert charts["loss"]["points"] == 6 and charts["validation accuracy"]["points"] == 6
    assert charts["score"]["points"] == 3 and charts["score"]["path"].count("L") == 2
    assert charts["flaky"]["points"] == 2 and charts["flaky"]["missing"] == 1
    assert check["accuracy"] == "top-1 0.700"
    assert check["lazy"] == check["images"] == 2 and check["external"] == []


@needs_chromium
def test_latest_picture_is_drawn(tmp_path):
    viz = make_run(tmp_path / "run")
    shot = tmp_path / "gallery.png"
    chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1400,1000", (viz / "index.html").as_uri()
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    counts = [int(np.all(pixels == c, axis=1).sum()) for c in COLOURS]
    # the 60x40 picture of the latest epoch (blue), shown at twice its size; no older epoch
    assert counts[2] >= 120 * 80 * 0.95 and counts[0] == counts[1] == 0, counts


def test_sections_follow_the_paper_then_custom_callbacks():
    keys = ["actmax/conv5", "mean_image/mean", "occlusion/panels", "deconv/conv1", "a/x"]
    keys += ["invariance/curves", "heatmaps/maps", "filters/conv1", "evolution/conv5"]
    names = [name for name, _ in section_order(keys)]
    assert names == [
        "deconv",
        "evolution",
        "occlusion",
        "filters",
        "heatmaps",
        "actmax",
        "invariance",
        "a",
        "mean_image",
    ]


def make_growing_run(run: Path) -> Path:
    """Figures whose size and caption change between epochs, as the evolution strip's and the
    deconv figures' do, in the sections of three callbacks written out of the paper's order."""
    run.mkdir(parents=True)
    for epoch in range(3):
        trainer = SimpleNamespace(
            default_root_dir=str(run), current_epoch=epoch, global_step=10 * epoch, loggers=[]
        )
        strip = np.full((300, 200 * (epoch + 1), 3), 90, np.uint8)  # one column more per epoch
        text = "a caption that grows with every epoch " * (1 + 4 * epoch)
        write_outputs(trainer, "mine", VizResult({"plain": strip[:50, :80]}), background=False)
        write_outputs(trainer, "occlusion", VizResult({"panels": strip[:, :700]}), background=False)
        result = VizResult({"conv5": Figure(strip, text)}, {"score": 0.5})
        write_outputs(trainer, "evolution", result, background=False)
    write_gallery(run / "viz", force=True)  # the end of a run: the last update is not debounced
    return run / "viz"


@needs_chromium
@pytest.mark.parametrize("width", [500, 1400])
def test_layout_holds_and_cards_keep_their_size(tmp_path, width):
    viz = make_growing_run(tmp_path / "run")
    dom = chromium(
        tmp_path,
        f"--window-size={width},1000",
        "--dump-dom",
        (viz / "index.html").as_uri() + "#selftest",
    ).stdout
    found = re.search(r'<pre id="selftest">(.*?)</pre>', dom, re.DOTALL)
    check = json.loads(html.unescape(found.group(1)))
    assert check["sections"] == ["evolution", "occlusion", "mine"]
    assert check["page_width"] <= check["viewport"], "nothing wider than the window"
    for card in check["layout"]:
        assert card["overflow"] <= 0 and card["right"] <= check["viewport"], card
        assert card["caption_right"] <= card["right"], card
    for key, sizes in zip(check["keys"], check["sizes"], strict=True):
        assert len(set(map(tuple, sizes))) == 1, f"{key} changes size between epochs: {sizes}"


@needs_chromium
def test_baselines_are_reference_lines_in_their_score_chart(tmp_path):
    run = tmp_path / "run"
    for epoch in range(3):
        trainer = SimpleNamespace(
            default_root_dir=str(run), current_epoch=epoch, global_step=epoch + 1, loggers=[]
        )
        scalars = {
            "pointing_game": 0.5 + 0.1 * epoch,
            "pointing_game_baseline_centre": 0.6,
            "pointing_game_baseline_random": 0.2,
            "pointing_game_margin": 0.1 * epoch - 0.1,
            "lonely_baseline_centre": 1.0,  # no score of that name: a chart of its own
        }
        write_outputs(trainer, "att", VizResult(scalars=scalars), background=False)
    write_gallery(run / "viz", force=True)  # the end of a run: the last update is not debounced
    page = (run / "viz" / "index.html").as_uri() + "#selftest"
    dom = chromium(tmp_path, "--dump-dom", page).stdout
    check = json.loads(html.unescape(re.search(r'<pre id="selftest">(.*?)</pre>', dom).group(1)))
    charts = {c["key"]: c for c in check["charts"]}
    assert set(charts) == {"pointing_game", "pointing_game_margin", "lonely_baseline_centre"}
    assert charts["pointing_game"]["points"] == 3
    assert charts["pointing_game"]["references"] == [3, 3]  # centre and random, 3 epochs each
    assert charts["pointing_game_margin"]["references"] == []
