"""Where visual output goes: PNG files and a static gallery under the run directory (always), and
every attached logger that takes images or scalars (W&B, TensorBoard, CSV). Rank 0 only."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from zflight.analysis.images import caption, grid

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from zflight.callbacks.base import Figure, VizResult


def viz_dir(trainer: pl.Trainer) -> Path:
    """``<run_dir>/viz``; the run directory is the trainer's ``default_root_dir`` (no collective)."""
    return Path(trainer.default_root_dir) / "viz"


def as_figures(value: Any) -> list[Figure]:
    """Normalise an array, a Figure or a list of either to a list of Figures."""
    from zflight.callbacks.base import Figure

    items = value if isinstance(value, (list, tuple)) else [value]
    figs = [it if isinstance(it, Figure) else Figure(np.asarray(it)) for it in items]
    for f in figs:
        if f.image.dtype != np.uint8 or f.image.ndim != 3 or f.image.shape[2] != 3:
            raise ValueError(
                f"figures must be uint8 HxWx3 arrays, got {f.image.dtype} {f.image.shape}"
            )
    return figs


def compose(figs: list[Figure]) -> np.ndarray:
    """One picture for a list of figures: captioned tiles, wide panels stacked, small ones in a grid."""
    if len(figs) == 1 and not figs[0].caption:
        return figs[0].image
    tiles = [caption(f.image, f.caption) if f.caption else f.image for f in figs]
    wide = tiles[0].shape[1] > 2 * tiles[0].shape[0]
    return grid(tiles, ncols=1 if wide else math.ceil(math.sqrt(len(tiles))), pad=4)


def write_outputs(trainer: pl.Trainer, name: str, result: VizResult) -> None:
    """Write one callback's result for the current epoch everywhere it belongs."""
    root = viz_dir(trainer)
    epoch, step = trainer.current_epoch, trainer.global_step
    for key, value in result.figures.items():
        figs = as_figures(value)
        path = root / name / key / f"epoch_{epoch:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(compose(figs)).save(path, compress_level=1)
        _log_images(trainer, f"{name}/{key}", figs, step)
    scalars = {f"{name}/{k}": float(v) for k, v in result.scalars.items()}
    if scalars:
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
        root.mkdir(parents=True, exist_ok=True)
        with open(root / "scalars.jsonl", "a") as f:
            for k, v in scalars.items():
                f.write(json.dumps({"epoch": epoch, "step": step, "key": k, "value": v}) + "\n")
    write_gallery(root)


def _log_images(trainer: pl.Trainer, key: str, figs: list[Figure], step: int) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):  # W&B shows a list best when its images share one size
            logger.log_image(
                key=key,
                images=_same_size([f.image for f in figs]),
                caption=[f.caption for f in figs],
                step=step,
            )
        elif isinstance(logger, TensorBoardLogger):
            for i, f in enumerate(figs):
                tag = key if len(figs) == 1 else f"{key}/{i}"
                logger.experiment.add_image(tag, f.image, step, dataformats="HWC")


def _same_size(images: list[np.ndarray]) -> list[np.ndarray]:
    """Pad images with white to the largest height and width among them."""
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    out = []
    for im in images:
        canvas = np.full((h, w, 3), 255, np.uint8)
        canvas[: im.shape[0], : im.shape[1]] = im
        out.append(canvas)
    return out


_EPOCH_PNG = re.compile(r"epoch_(\d+)\.png$")


def write_gallery(root: Path) -> Path:
    """``index.html``: one row per epoch, one column per figure key, plus that epoch's scalars."""
    cells: dict[int, dict[str, str]] = {}
    keys: set[str] = set()
    for png in sorted(root.rglob("epoch_*.png")):
        m = _EPOCH_PNG.search(png.name)
        if not m:
            continue
        key = png.parent.relative_to(root).as_posix()
        keys.add(key)
        cells.setdefault(int(m.group(1)), {})[key] = png.relative_to(root).as_posix()
    scalars: dict[int, list[str]] = {}
    if (root / "scalars.jsonl").exists():
        for line in (root / "scalars.jsonl").read_text().splitlines():
            r = json.loads(line)
            scalars.setdefault(r["epoch"], []).append(f"{r['key']} = {r['value']:.4g}")
    cols = sorted(keys)
    rows = []
    for epoch in sorted(set(cells) | set(scalars)):
        tds = "".join(
            f'<td><a href="{html.escape(cells[epoch][k])}"><img src="{html.escape(cells[epoch][k])}"></a></td>'
            if k in cells.get(epoch, {})
            else "<td></td>"
            for k in cols
        )
        sc = "<br>".join(html.escape(s) for s in scalars.get(epoch, []))
        rows.append(f"<tr><th>epoch {epoch}</th>{tds}<td class=s>{sc}</td></tr>")
    head = "".join(f"<th>{html.escape(k)}</th>" for k in cols)
    page = (
        "<!doctype html><meta charset=utf-8><title>zflight gallery</title><style>"
        "body{font-family:sans-serif}td,th{vertical-align:top;border:1px solid #ccc;padding:4px}"
        "img{max-width:360px}.s{font-size:11px;white-space:nowrap}</style>"
        f"<table><tr><th></th>{head}<th>scalars</th></tr>{''.join(rows)}</table>"
    )
    out = root / "index.html"
    out.write_text(page)
    return out
