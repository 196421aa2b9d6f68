"""How stable and how true are the filter-health verdicts over a run?

Re-measures every per-epoch checkpoint of a run (``ModelCheckpoint(save_top_k=-1)``, with
``FilterHealth`` in the run so its start is in the checkpoint) with the current definitions:
statuses of conv1 and conv2 per epoch, with and without hysteresis (each epoch's statuses fed to
the next, as the callback does), the median movement and cosine to the start, the old single
cosine threshold (0.5) for comparison, and the rates of status changes and flaps (a change undone
at the next epoch). Run from the repository root:

    python benchmarks/filter_verdicts.py runs/<run>/epochs

A run with a checkpoint per epoch (the default recipe, filter health only, on 64 probes):

    python -m zflight.train run_dir=runs/verdicts logger=csv callbacks=none \\
      callbacks.filters._target_=zflight.callbacks.filter_health.FilterHealth \\
      "callbacks.filters.layers=[conv1,conv2]" \\
      callbacks.epochs._target_=lightning.pytorch.callbacks.ModelCheckpoint \\
      callbacks.epochs.dirpath=runs/verdicts/epochs callbacks.epochs.save_top_k=-1
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from zflight.ablation.measure import (
    filter_start,
    layer_report,
    load_network,
    never_positive,
    validation_images,
)
from zflight.analysis.filters import STATUSES
from zflight.analysis.stats import status_changes
from zflight.run.checkpoints import read_checkpoint

LAYERS = ("conv1", "conv2")


def epoch_of(path: Path) -> int:
    found = re.search(r"epoch=(\d+)", path.name)
    return int(found.group(1)) if found else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("epochs", type=Path, help="folder of per-epoch checkpoints")
    args = parser.parse_args()
    paths = sorted(args.epochs.glob("*.ckpt"), key=epoch_of)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; {len(paths)} epochs")
    images = None
    history: dict[tuple[str, bool], list[list[int]]] = {}
    previous: dict[str, torch.Tensor | None] = {name: None for name in LAYERS}
    head = (
        "| epoch | layer | "
        + " | ".join(STATUSES)
        + " | raw: untrained, dead | median movement | median cos | cos > 0.5 |"
    )
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for path in paths:
        ckpt = read_checkpoint(path, "checkpoint")
        model, cfg = load_network(ckpt)
        start = filter_start(ckpt)
        if images is None:
            images, _ = validation_images(cfg)
        positive = never_positive(model.features, list(LAYERS), images)
        for name in LAYERS:
            raw = layer_report(model, name, start, positive[name])
            kept = layer_report(model, name, start, positive[name], previous=previous[name])
            previous[name] = kept.status
            history.setdefault((name, True), []).append(kept.status.tolist())
            history.setdefault((name, False), []).append(raw.status.tolist())
            c, r = kept.counts(), raw.counts()
            assert kept.movement is not None and kept.cos_start is not None
            print(
                f"| {epoch_of(path)} | {name} | "
                + " | ".join(str(c[s]) for s in STATUSES)
                + f" | {r['untrained']}, {r['dead']} | {float(kept.movement.median()):.3f}"
                f" | {float(kept.cos_start.median()):.3f} | {int((kept.cos_start > 0.5).sum())} |"
            )
    print("\n| layer | statuses | changes / possible | flaps / possible |\n|---|---|---|---|")
    for (name, hysteresis), seq in sorted(history.items()):
        changes, n_changes, flaps, n_flaps = status_changes(seq)
        print(
            f"| {name} | {'with' if hysteresis else 'without'} hysteresis | "
            f"{changes} / {n_changes} ({changes / max(n_changes, 1):.1%}) | "
            f"{flaps} / {n_flaps} ({flaps / max(n_flaps, 1):.1%}) |"
        )


if __name__ == "__main__":
    main()
