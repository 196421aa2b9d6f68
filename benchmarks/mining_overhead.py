"""What does streaming top-9 mining add to a validation epoch?

Validation of ZFNet (width 0.25) on the shapes data set (64 px, 8 classes, 2000 validation images)
through ``Trainer.validate``, without and with ``DeconvTopK`` mining all five conv layers (16
features per layer, k = 9). Only the validation loop is timed (epoch start to epoch end, before
the callback's end-of-epoch analysis), so the ratio is the cost of the hooks alone; the
analysis itself (merge, deconvnet projections of the winners, figures) is timed once, separately.
The two variants alternate (which goes first flips every pair); the overhead is the median of
the paired ratios.

    python benchmarks/mining_overhead.py [--repeats 31] [--batch-size 128] [--accelerator auto]
                                         [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import lightning.pytorch as pl
import torch

from zflight.callbacks.deconv import DeconvTopK
from zflight.data.modules import ShapesDataModule
from zflight.models import zfnet
from zflight.module import ClassifierModule
from zflight.run.memory import keep_freed_memory


class LoopTimer(pl.Callback):
    """Seconds from validation epoch start to end (first in the callback list, so its end hook runs
    before any visual callback's analysis)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


class StreamOnly(DeconvTopK):
    """DeconvTopK with the end-of-epoch analysis skipped: the mining hooks alone, whose own time is
    also summed per epoch (a second, less noise-prone reading of the overhead)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hook_times: list[float] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.hook_times.append(0.0)  # one slot per validation epoch (reset_stream runs more often)
        super().on_validation_epoch_start(trainer, pl_module)

    def stream_hooks(self, model):
        def timed(fn):
            def hook(module, inputs, output):
                start = time.perf_counter()
                fn(module, inputs, output)
                self.hook_times[-1] += time.perf_counter() - start

            return hook

        return [(module, timed(fn)) for module, fn in super().stream_hooks(model)]

    def analyze(self, model, probe, ctx):
        self.reset_stream()
        return None


def environment(trainer: pl.Trainer) -> str:
    device = str(trainer.strategy.root_device)
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name()})"
    else:
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(
                    line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
                )
        except (OSError, StopIteration):
            cpu = platform.processor() or "?"
        device += f" ({cpu}, {os.cpu_count()} cores)"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"torch {torch.__version__}, lightning {pl.__version__}, python {platform.python_version()}\n"
        f"device {device}, torch threads {torch.get_num_threads()}, precision "
        f"{trainer.precision}, load average {load}"
    )


def make_trainer(args: argparse.Namespace, callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        precision=args.precision,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=args.root,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument(
        "--batch-size", type=int, default=128, help="training batch; validation uses 2x"
    )
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--root", default="/tmp/zflight-mining-overhead")
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's allocator as it is (training keeps freed memory for reuse)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if not args.system_malloc:
        keep_freed_memory()  # as `zflight.train` does (trainer.keep_freed_memory=true)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    data = ShapesDataModule(val_size=args.val_size, batch_size=args.batch_size)
    module = ClassifierModule(zfnet(num_classes=8, width=0.25, head_pool=2), num_classes=8)
    layers = ["conv1", "conv2", "conv3", "conv4", "conv5"]
    plain_timer, mining_timer = LoopTimer(), LoopTimer()
    plain = make_trainer(args, [plain_timer])
    stream = StreamOnly(layers=layers, features_per_layer=16, k=9, strict=True)
    mining = make_trainer(args, [mining_timer, stream])
    plain.validate(module, data, verbose=False)  # warm-up: data rendering, allocator, kernels
    mining.validate(module, data, verbose=False)
    plain_timer.times.clear()
    mining_timer.times.clear()
    stream.hook_times.clear()
    for i in range(args.repeats):  # alternate which variant goes first in a pair
        for trainer in (plain, mining) if i % 2 == 0 else (mining, plain):
            trainer.validate(module, data, verbose=False)

    full = DeconvTopK(layers=layers, features_per_layer=16, k=9, strict=True)
    full_timer = LoopTimer()
    analysis = make_trainer(args, [full_timer, full])
    start = time.perf_counter()
    analysis.validate(module, data, verbose=False)
    analysis_s = time.perf_counter() - start - full_timer.times[-1]

    n = len(data.val_dataset)
    base = statistics.median(plain_timer.times)
    print(environment(plain))
    print(
        f"ZFNet width 0.25, shapes 64 px, {n} validation images, validation batch "
        f"{2 * args.batch_size}, {args.repeats} interleaved repeats; layers {', '.join(layers)}"
    )
    print()
    print(f"{'variant':<34}{'median s':>10}{'min s':>9}{'img/s':>9}{'vs plain':>10}")
    for name, times in (
        ("validation loop", plain_timer.times),
        ("validation loop + top-9 mining", mining_timer.times),
    ):
        med = statistics.median(times)
        print(f"{name:<34}{med:>10.3f}{min(times):>9.3f}{n / med:>9.0f}{med / base:>9.3f}x")
    print(
        f"{'end-of-epoch analysis (once)':<34}{analysis_s:>10.3f}{'':>9}{'':>9}"
        f"{analysis_s / base:>9.3f}x"
    )
    ratios = [m / p for m, p in zip(mining_timer.times, plain_timer.times)]
    inside = [h / m for h, m in zip(stream.hook_times, mining_timer.times)]
    print(
        f"\nmining overhead (target: at most +5% of validation time)\n"
        f"  median of the {len(ratios)} paired loop-time ratios: {100 * (statistics.median(ratios) - 1):+.1f}%\n"
        f"  time inside the mining hooks:        {100 * statistics.median(inside):.1f}% of the mined "
        f"loop = {100 * statistics.median(inside) / (1 - statistics.median(inside)):+.1f}% over plain"
    )


if __name__ == "__main__":
    main()
