"""What does keeping the gallery up to date cost at epoch 10 and at epoch 1,000 (35 picture keys)?

For each history length a run's ``viz/`` folder is laid out as training leaves it (a tiny PNG per
key and epoch with its caption, scalars and metrics lines), the incremental gallery is brought up
to date once (as a process does when it starts or resumes), and then one more epoch is played: 35
PNGs announced, their scalars and the metrics line appended, and the gallery updated 8 times (as
the writer thread asks, undebounced: the worst case). The table gives the gallery's time for that
epoch, and for comparison one full rebuild from disk (what every update cost before).

    python benchmarks/gallery_history.py [--epochs 10 1000] [--keys 35]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from zflight.callbacks.gallery import gallery_data, render
from zflight.callbacks.gallery_index import GalleryIndex

UPDATES_PER_EPOCH = 8


def png(path: Path, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("Description", f"{path.parent.name}, epoch {epoch}: a caption of some length")
    Image.fromarray(np.full((4, 4, 3), epoch % 255, np.uint8)).save(path, pnginfo=info)


def lay_out(viz: Path, epochs: int, keys: list[str]) -> None:
    (viz.parent / "config.yaml").write_text("model: {name: zfnet}\ntrainer: {max_epochs: 9999}\n")
    with open(viz / "scalars.jsonl", "w") as s, open(viz / "metrics.jsonl", "w") as m:
        for e in range(epochs):
            for k in keys:
                png(viz / k / f"epoch_{e:04d}.png", e)
                s.write(
                    json.dumps({"epoch": e, "step": e, "key": f"{k}/score", "value": 0.5}) + "\n"
                )
            m.write(json.dumps({"epoch": e, "step": e, "val/acc1": 0.5}) + "\n")


def one_epoch(viz: Path, index: GalleryIndex, epoch: int, keys: list[str]) -> float:
    """Gallery time for one more epoch (the PNGs themselves are written outside the timing)."""
    for k in keys:
        png(viz / k / f"epoch_{epoch:04d}.png", epoch)
    spent = 0.0
    per_update = -(-len(keys) // UPDATES_PER_EPOCH)
    for i in range(0, len(keys), per_update):
        lines = "".join(
            json.dumps({"epoch": epoch, "step": epoch, "key": f"{k}/score", "value": 0.5}) + "\n"
            for k in keys[i : i + per_update]
        )
        started = time.perf_counter()
        for k in keys[i : i + per_update]:
            index.note_figure(viz / k / f"epoch_{epoch:04d}.png")
        with open(viz / "scalars.jsonl", "a") as f:
            f.write(lines)
        index.update(force=True)
        spent += time.perf_counter() - started
    started = time.perf_counter()
    with open(viz / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": epoch, "step": epoch, "val/acc1": 0.5}) + "\n")
    index.update(force=True)
    return spent + time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--keys", type=int, default=35)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {platform.machine()}, {os.cpu_count()} CPUs")
    keys = [f"cb{i // 5}/key{i % 5}" for i in range(args.keys)]
    rows = []
    for epochs in args.epochs:
        with tempfile.TemporaryDirectory() as tmp:
            viz = Path(tmp) / "run" / "viz"
            viz.mkdir(parents=True)
            lay_out(viz, epochs, keys)
            index = GalleryIndex(viz, debounce_s=0.0)
            started = time.perf_counter()
            index.update(force=True)
            start_up = time.perf_counter() - started
            epoch = min(one_epoch(viz, index, epochs + i, keys) for i in range(3))
            started = time.perf_counter()
            render(gallery_data(viz))
            full = time.perf_counter() - started
            rows.append((epochs, epoch, start_up, full))
    print(f"{'epochs':>7} {'gallery per epoch':>18} {'first update':>13} {'full rebuild':>13}")
    for epochs, epoch, start_up, full in rows:
        print(f"{epochs:>7} {epoch * 1e3:>15.1f} ms {start_up:>11.2f} s {full:>11.2f} s")
    if len(rows) > 1:
        print(
            f"per-epoch cost, {rows[-1][0]} against {rows[0][0]} epochs: "
            f"{rows[-1][1] / rows[0][1]:.2f}x (best of 3 epochs each)"
        )


if __name__ == "__main__":
    main()
