"""Share of an epoch spent in the visual callbacks, at their defaults with every_n_epochs=1.

Measures on this machine's CPU, with the shapes data set (ZFNet width 0.25, 64 px, batch 128 by
default), each callback found in ``zflight.callbacks`` on its own: the time of its analysis, of
writing its output (PNG files), and of its streaming hooks during validation, in the second epoch
(the first builds the probe set). The share is reported for a default shapes epoch (16,000 train
+ 2,000 validation images, at the measured speed) and extrapolated to an ImageNet epoch on 4 GPUs
under the assumptions printed with the table (an optimistic and a pessimistic bound).
``--size 224 --width 1`` measures at ImageNet geometry instead (slow on a CPU; figures then have
their ImageNet size and only the compute speed is extrapolated). On a GPU machine
(``--accelerator gpu``, the default where CUDA is present) the costs are measured there and only
the epoch length is taken from the assumptions.

    python benchmarks/callback_overhead.py --size 224 --width 1 --train 4096 --val 2048  # GPU

    python benchmarks/callback_overhead.py --quick      # a few minutes on 2 idle cores
    python benchmarks/callback_overhead.py --callbacks deconv,occlusion
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import tempfile
import time
from collections import defaultdict

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

import zflight.callbacks as callbacks_pkg
from zflight.callbacks import base
from zflight.callbacks.base import VisualizationCallback
from zflight.data import ShapesDataModule
from zflight.models import zfnet
from zflight.module import ClassifierModule

ACCELERATOR = "cpu"  # set by --accelerator


def now() -> float:
    """Wall time after the GPU (if used) has finished what was queued."""
    if ACCELERATOR == "gpu":
        torch.cuda.synchronize()
    return time.perf_counter()


SHAPES_TRAIN, SHAPES_VAL = 16_000, 2_000
IMAGENET_TRAIN, IMAGENET_VAL, GPUS = 1_281_167, 50_000, 4
GPU_RATE = 22_500  # train img/s per GPU at ImageNet scale (the training-speed target, 1.3 x 17,290)
VAL_SPEEDUP = 3.0  # a validation image costs a third of a training image (forward only)
LOGGER_ENCODES = 2  # the sink's PNG and W&B's own PNG of each figure
SMALL_BATCH_PENALTY = 10.0  # pessimistic: probe-sized batches at a tenth of training efficiency


def discover() -> dict[str, type[VisualizationCallback]]:
    """Every concrete VisualizationCallback defined in the modules of ``zflight.callbacks``."""
    found = {}
    for info in pkgutil.iter_modules(callbacks_pkg.__path__):
        if info.name in ("base", "sinks"):
            continue
        module = importlib.import_module(f"zflight.callbacks.{info.name}")
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, VisualizationCallback)
                and obj.__module__ == module.__name__
                and not obj.__name__.startswith("_")
                and obj.analyze is not VisualizationCallback.analyze
            ):
                found[obj.name] = obj
    return dict(sorted(found.items()))


class Clock(pl.Callback):
    """Summed wall time of training and validation batches, per epoch."""

    def __init__(self) -> None:
        self.train, self.val = defaultdict(float), defaultdict(float)
        self.train_n, self.val_n = defaultdict(int), defaultdict(int)
        self._t = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train[trainer.current_epoch] += now() - self._t
        self.train_n[trainer.current_epoch] += batch[0].shape[0]

    def on_validation_batch_start(
        self, trainer, pl_module, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._t = now()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.sanity_checking:
            self.val[trainer.current_epoch] += now() - self._t
            self.val_n[trainer.current_epoch] += batch[0].shape[0]


class Timings(pl.Callback):
    """Per-epoch seconds one callback spends in its analysis and its streaming hooks."""

    def __init__(self, cb: VisualizationCallback) -> None:
        self.analyze, self.stream = defaultdict(float), defaultdict(float)
        self.epoch = 0
        analyze, hooks = cb.analyze, cb.stream_hooks

        def timed_analyze(*args, **kwargs):
            start = now()
            try:
                return analyze(*args, **kwargs)
            finally:
                self.analyze[self.epoch] += now() - start

        def timed_hook(fn):
            def hook(*args):
                start = now()
                try:
                    fn(*args)
                finally:
                    self.stream[self.epoch] += now() - start

            return hook

        cb.analyze = timed_analyze
        cb.stream_hooks = lambda model: [(m, timed_hook(fn)) for m, fn in hooks(model)]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch = trainer.current_epoch


def classifier(dm: ShapesDataModule, width: float) -> ClassifierModule:
    """The shapes recipe (AdamW) on ZFNet of the given width; the same weights for every run."""
    torch.manual_seed(0)
    head_pool = 6 if dm.image_size >= 200 else 2
    model = zfnet(num_classes=dm.num_classes, width=width, head_pool=head_pool)
    return ClassifierModule(model, dm.num_classes, optimizer="adamw", lr=2e-3, schedule="none")


def fit(dm: ShapesDataModule, width: float, callbacks: list[pl.Callback], root: str) -> None:
    """Two epochs on the CPU; the second is the one measured."""
    trainer = pl.Trainer(
        accelerator=ACCELERATOR,
        devices=1,
        max_epochs=2,
        default_root_dir=root,
        logger=CSVLogger(root),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    trainer.fit(classifier(dm, width), dm)


def measure(names: list[str], found: dict, dm: ShapesDataModule, width: float):
    """Seconds per train and val image without callbacks, and per callback (analysis, output,
    streaming per validation image) in the second epoch."""
    output: dict[tuple[str, int], float] = defaultdict(float)
    handoff: dict[tuple[str, int], float] = defaultdict(float)
    write = base.write_outputs

    def timed_write(trainer, name, result, *args):
        # all of the writing on this thread (what a synchronous sink costs) ...
        start = now()
        write(trainer, name, result, False, True)
        output[name, trainer.current_epoch] += now() - start
        # ... and what is left on it when the background writer takes the figures
        start = now()
        write(trainer, name, result, True, True)
        handoff[name, trainer.current_epoch] += now() - start
        base.WRITER.flush()

    base.write_outputs = timed_write
    rows = {}
    try:
        with tempfile.TemporaryDirectory() as root:
            clock = Clock()
            fit(dm, width, [clock], root)
            train_img, val_img = clock.train[1] / clock.train_n[1], clock.val[1] / clock.val_n[1]
            for name in names:
                cb = found[name](every_n_epochs=1, strict=True)
                timing = Timings(cb)
                fit(dm, width, [cb, timing], root)
                rows[name] = (
                    timing.analyze[1],
                    output[name, 1],
                    timing.stream[1] / dm.val_size,
                    handoff[name, 1],
                    getattr(cb, "stats_images", None),  # streams only this many images per rank
                )
    finally:
        base.write_outputs = write
    return train_img, val_img, rows


def report(rows: dict, train_img: float, val_img: float, size: int, on_gpu: bool = False) -> None:
    """The table: measured costs and shapes-epoch shares, and the ImageNet extrapolation."""
    shapes_epoch = SHAPES_TRAIN * train_img + SHAPES_VAL * val_img
    gpu_img = 1 / GPU_RATE
    # CPU image here -> GPU ImageNet image, same share of the work; measured on a GPU: as is
    scale = 1.0 if on_gpu else gpu_img / train_img
    penalty = 1.0 if on_gpu else SMALL_BATCH_PENALTY
    pixels = (224 / size) ** 2
    in_epoch = IMAGENET_TRAIN / (GPUS * GPU_RATE) + IMAGENET_VAL / (GPUS * GPU_RATE * VAL_SPEEDUP)
    val_per_rank = IMAGENET_VAL / GPUS
    head = (
        "callback",
        "analysis",
        "output",
        "stream",
        "shapes",
        "ImageNet, 4 GPUs",
        "background output",
    )
    units = ("", "ms/call", "ms/call", "us/val img", "share", "opt..pess share", "opt..pess share")
    for row in (head, units):
        print(
            f"{row[0]:<13}{row[1]:>10}{row[2]:>10}{row[3]:>12}{row[4]:>9}{row[5]:>20}{row[6]:>20}"
        )
    total = defaultdict(float)
    for name, (analysis, output, stream, handoff, stats_images) in rows.items():
        costs = {"shapes": analysis + output + stream * SHAPES_VAL}
        streamed = min(val_per_rank, stats_images or val_per_rank)
        for bound, slow, grow in (("opt", 1.0, 1.0), ("pess", penalty, pixels)):
            # streaming runs on full validation batches: no small-batch penalty
            work = (analysis * slow + stream * streamed) * scale
            costs[bound] = work + output * grow * LOGGER_ENCODES
            costs[bound + "_async"] = work + handoff * grow
        for k, v in costs.items():
            total[k] += v
        _row(
            name,
            f"{analysis * 1e3:.0f}",
            f"{output * 1e3:.0f}",
            f"{stream * 1e6:.1f}",
            costs,
            shapes_epoch,
            in_epoch,
        )
    _row("all", "", "", "", total, shapes_epoch, in_epoch)
    print(
        f"\nshapes epoch (this geometry) without callbacks: {shapes_epoch:.1f} s "
        f"({SHAPES_TRAIN} train at {1 / train_img:.0f} img/s, {SHAPES_VAL} val at "
        f"{1 / val_img:.0f} img/s, measured here)"
    )
    print(
        f"ImageNet epoch without callbacks: {in_epoch:.1f} s: {GPUS} GPUs training at {GPU_RATE} "
        f"img/s each, validating {VAL_SPEEDUP:.0f}x faster, {IMAGENET_TRAIN} + {IMAGENET_VAL} images"
    )
    print(
        f"  analysis and streaming: measured time x {scale:.5f} "
        f"{'(measured on this GPU)' if on_gpu else '(GPU ImageNet / CPU time per training image)'}"
        f"; pessimistic x {penalty:.0f} more for the analyses (probe batches of a few images run "
        f"far below training efficiency), none for streaming (full validation batches); every "
        f"rank analyses, each streams {val_per_rank:.0f} validation images (fewer where a "
        f"callback caps it, e.g. FilterHealth's stats_images)"
    )
    print(
        f"  output (rank 0 while the others wait at the next collective): CPU time x "
        f"{LOGGER_ENCODES} (W&B encodes each image again), optimistic with figures of the same "
        f"size (tiles fixed by parameters), pessimistic x {pixels:.1f} (figures grow with the "
        f"224/{size} px image area); 'background output' (the default, sinks.WRITER) counts only the main "
        f"thread's hand-off (copying the figures, logging scalars), measured here"
    )


def _row(name, analysis, output, stream, costs, shapes_epoch, in_epoch) -> None:
    imnet = f"{_share(costs['opt'], in_epoch)}..{_share(costs['pess'], in_epoch)}"
    asyn = f"{_share(costs['opt_async'], in_epoch)}..{_share(costs['pess_async'], in_epoch)}"
    print(
        f"{name:<13}{analysis:>10}{output:>10}{stream:>12}{_share(costs['shapes'], shapes_epoch):>9}"
        f"{imnet:>20}{asyn:>20}"
    )


def _share(cost: float, epoch: float) -> str:
    return f"{100 * cost / (epoch + cost):.2f}%"


def environment() -> str:
    return (
        f"torch {torch.__version__}, lightning {pl.__version__}, device {ACCELERATOR}"
        f"{' (' + torch.cuda.get_device_name() + ')' if ACCELERATOR == 'gpu' else ''}, "
        f"threads {torch.get_num_threads()}"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="512 train / 256 validation images")
    p.add_argument("--train", type=int, default=2048, help="training images per measured epoch")
    p.add_argument("--val", type=int, default=1024, help="validation images per measured epoch")
    p.add_argument("--callbacks", default="all", help="comma-separated names, or all")
    p.add_argument("--size", type=int, default=64, help="image side (224: ImageNet geometry)")
    p.add_argument("--width", type=float, default=0.25, help="ZFNet width (1.0: the paper's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--accelerator",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="gpu: measure there directly (use --size 224 --width 1 for ImageNet geometry)",
    )
    args = p.parse_args(argv)
    global ACCELERATOR
    ACCELERATOR = args.accelerator
    if ACCELERATOR == "auto":
        ACCELERATOR = "gpu" if torch.cuda.is_available() else "cpu"
    if args.quick:
        args.train, args.val = 512, 256
    if args.threads:
        torch.set_num_threads(args.threads)
    found = discover()
    names = list(found) if args.callbacks == "all" else args.callbacks.split(",")
    unknown = [n for n in names if n not in found]
    if unknown:
        p.error(f"unknown callback(s) {unknown}; found: {', '.join(found)}")
    dm = ShapesDataModule(args.train, args.val, args.size, 8, args.batch, 0, seed=0, cache_dir=None)
    train_img, val_img, rows = measure(names, found, dm, args.width)
    print(environment())
    print(f"callbacks found in zflight.callbacks: {', '.join(found)}; measured: {', '.join(names)}")
    print(
        f"shapes, ZFNet width {args.width}, {args.size} px, batch {args.batch}, second of two "
        f"epochs of {args.train} + {args.val} images, every_n_epochs=1, defaults otherwise\n"
    )
    report(rows, train_img, val_img, args.size, on_gpu=ACCELERATOR == "gpu")


if __name__ == "__main__":
    main()
