"""Where visual output goes: PNG files, ``scalars.jsonl`` and the gallery (``gallery.py``) under the
run directory (always), and every attached logger that takes images, scalars or tables (W&B,
TensorBoard, CSV). Rank 0 only.

Everything a callback logs for an epoch goes to the loggers at the step Lightning gives that
epoch's validation metrics (``log_step``), so W&B's step slider shows them together.

Scalars reach the loggers at once. Figures are encoded on one background thread (``WRITER``, in
``writer.py``), in the order they were produced, so rank 0 goes back to training (and the other
ranks stop waiting for it at the next collective) while PNGs are compressed. W&B's ``log`` is not
thread-safe, so the thread only encodes the W&B images; the ``log`` call itself is handed back and
made on the main thread at the next ``drain()`` (the images keep their step).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from zflight.analysis.images import caption, grid
from zflight.callbacks.disk import DISK
from zflight.callbacks.gallery_index import gallery_index, write_gallery
from zflight.callbacks.results import Figure, Table, VizResult
from zflight.callbacks.writer import WRITER, BackgroundWriter, Finish

__all__ = [
    "WRITER",
    "BackgroundWriter",
    "as_figures",
    "compose",
    "json_value",
    "log_step",
    "png_caption",
    "viz_dir",
    "write_outputs",
]

if TYPE_CHECKING:
    import lightning.pytorch as pl


def viz_dir(trainer: pl.Trainer) -> Path:
    """``<run_dir>/viz``; the run directory is the trainer's ``default_root_dir`` (no collective)."""
    return Path(trainer.default_root_dir) / "viz"


def as_figures(value: Any) -> list[Figure]:
    """Normalise an array, a Figure or a list of either to a list of Figures."""
    items = value if isinstance(value, (list, tuple)) else [value]
    figs = [it if isinstance(it, Figure) else Figure(np.asarray(it)) for it in items]
    for f in figs:
        if f.image.dtype != np.uint8 or f.image.ndim != 3 or f.image.shape[2] != 3:
            raise ValueError(
                f"figures must be uint8 HxWx3 arrays, got {f.image.dtype} {f.image.shape}"
            )
    return figs


def compose(figs: list[Figure]) -> np.ndarray:
    """One picture for a list of figures: captioned tiles, wide panels stacked, small ones in a grid.

    A single figure is its image as it is: its caption travels beside it (``png_caption``), shown
    as text by the gallery and W&B, not drawn over a figure that has its own title.
    """
    if len(figs) == 1:
        return figs[0].image
    tiles = [caption(f.image, f.caption) if f.caption else f.image for f in figs]
    wide = tiles[0].shape[1] > 2 * tiles[0].shape[0]
    return grid(tiles, ncols=1 if wide else math.ceil(math.sqrt(len(tiles))), pad=4)


def png_caption(figs: list[Figure], fallback: str = "") -> PngInfo | None:
    """A single figure's caption (``fallback`` when it has none) as the PNG's ``Description``
    text, which the gallery shows under the picture."""
    text = figs[0].caption or fallback if len(figs) == 1 else ""
    if not text:
        return None
    info = PngInfo()
    info.add_itxt("Description", text)  # UTF-8
    return info


def log_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs this epoch's validation metrics at.

    Validation runs before the epoch's last batch counts as stepped: ``val/*`` of an epoch of 250
    batches lands at 249 (``fit_loop.epoch_loop._batches_that_stepped``), not at
    ``global_step`` (250). Trainers without a fit loop (tests) use ``global_step``.
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))


def json_value(value: float) -> dict[str, Any]:
    """A scalar as strict JSON: finite values as numbers, NaN and ±Inf as null with a note."""
    if math.isfinite(value):
        return {"value": value}
    return {"value": None, "note": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}


def write_outputs(
    trainer: pl.Trainer,
    name: str,
    result: VizResult,
    background: bool = True,
    strict: bool = False,
) -> None:
    """Write one callback's result for the current epoch everywhere it belongs.

    Scalars (with ``epoch``) go to the loggers now; figures (copied, so the caller may reuse its
    arrays), tables, the ``scalars.jsonl`` lines and the gallery are written by ``WRITER`` when
    ``background``, else here.
    """
    root = viz_dir(trainer)
    epoch, step = trainer.current_epoch, log_step(trainer)
    figures = {
        key: [Figure(f.image.copy(), f.caption) for f in as_figures(value)]
        for key, value in result.figures.items()
    }
    tables = {key: _copied(t) for key, t in result.tables.items()}
    scalars = {f"{name}/{k}": float(v) for k, v in result.scalars.items()}
    loggers = list(trainer.loggers)
    if scalars:
        for logger in loggers:
            logger.log_metrics({**scalars, "epoch": epoch}, step=step)

    def job() -> Finish | None:
        finishes = []
        for key, figs in figures.items():
            path = root / name / key / f"epoch_{epoch:04d}.png"
            text = png_caption(figs, _default_caption(f"{name}/{key}", epoch, 0, 1))
            picture = Image.fromarray(compose(figs))
            if DISK.save(
                path,
                "picture",
                lambda f, im=picture, meta=text: im.save(f, "PNG", compress_level=1, pnginfo=meta),
            ):
                gallery_index(root).note_figure(path)
            finishes += _log_images(loggers, f"{name}/{key}", figs, epoch, step)
        for key, table in tables.items():
            finishes += _log_table(loggers, f"{name}/{key}", table, epoch, step)
        if scalars:
            lines = "".join(
                json.dumps(
                    {"epoch": epoch, "step": step, "key": k, **json_value(v)}, allow_nan=False
                )
                + "\n"
                for k, v in scalars.items()
            )
            DISK.append_text(root / "scalars.jsonl", lines, "scalars.jsonl line")
        write_gallery(root)
        return (lambda: [fin() for fin in finishes]) if finishes else None

    if background:
        WRITER.submit(name, job, strict)
        WRITER.drain()
    else:
        finish = job()
        if finish is not None:
            finish()


def _copied(table: Table) -> Table:
    """The table with its picture cells copied, so the caller may reuse its arrays."""
    rows = [[_picture(c).copy() if _is_picture(c) else c for c in row] for row in table.rows]
    return Table(list(table.columns), rows)


def _is_picture(cell: Any) -> bool:
    return isinstance(cell, (np.ndarray, Figure))


def _picture(cell: Any) -> np.ndarray:
    return as_figures(cell)[0].image


def _log_images(loggers: list, key: str, figs: list[Figure], epoch: int, step: int) -> list[Finish]:
    """Send figures to the loggers that take images; returns the calls left for the main thread.

    A figure without a caption gets one from its key and epoch: W&B shows captions under images.
    """
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    finishes: list[Finish] = []
    for logger in loggers:
        if isinstance(logger, WandbLogger):  # W&B shows a list best when its images share one size
            import wandb

            images = [
                wandb.Image(im, caption=f.caption or _default_caption(key, epoch, i, len(figs)))
                for i, (im, f) in enumerate(
                    zip(_same_size([f.image for f in figs]), figs, strict=True)
                )
            ]
            finishes.append(
                lambda lg=logger, im=images: lg.log_metrics({key: im, "epoch": epoch}, step=step)
            )
        elif isinstance(logger, TensorBoardLogger):  # its event writer is thread-safe
            for i, f in enumerate(figs):
                tag = key if len(figs) == 1 else f"{key}/{i}"
                logger.experiment.add_image(tag, f.image, step, dataformats="HWC")
    return finishes


def _default_caption(key: str, epoch: int, index: int, count: int) -> str:
    return f"{key}, epoch {epoch}" + (f" ({index + 1} of {count})" if count > 1 else "")


def _log_table(loggers: list, key: str, table: Table, epoch: int, step: int) -> list[Finish]:
    """A ``wandb.Table`` (pictures as ``wandb.Image``) for each W&B logger, logged at ``step``."""
    from lightning.pytorch.loggers import WandbLogger

    finishes: list[Finish] = []
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            rows = [
                [wandb.Image(_picture(c)) if _is_picture(c) else c for c in row]
                for row in table.rows
            ]
            data = wandb.Table(columns=list(table.columns), data=rows)
            finishes.append(
                lambda lg=logger, t=data: lg.log_metrics({key: t, "epoch": epoch}, step=step)
            )
    return finishes


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
