"""Training throughput: zflight through the Lightning Trainer vs a plain compiled PyTorch loop.

Every variant trains the same ZFNet on the same synthetic batch already on the device (SGD with
momentum, same batch, precision and memory format), one after another in one process, and the
table reports images/s and the ratio to the plain loop. ``zflight`` is the real thing:
``ClassifierModule`` (cross-entropy, torchmetrics accuracy logged every step, CSV logger) with the
fast LRN and max pool, driven by ``Trainer.fit``.

    python benchmarks/gpu_train.py              # CUDA: ImageNet shapes, bf16, compiled
    python benchmarks/gpu_train.py --quick      # CPU here: width 0.25, 64 px, fp32, eager

Needs only torch, lightning and torchmetrics (triton for the fused kernels on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import tempfile
import time
from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger

from zflight.models import zfnet
from zflight.models.fast_ops import use_fast_ops
from zflight.module import ClassifierModule

VARIANTS = {
    "plain": "plain loop, torch LRN/pool (the reference)",
    "plain-fast": "plain loop, fast LRN/pool",
    "plain-nolrn": "plain loop, LRN removed (not ZFNet: an upper bound)",
    "zflight": "Trainer + ClassifierModule, fast LRN/pool, metrics",
    "zflight-torchops": "Trainer + ClassifierModule, torch LRN/pool",
}


def build_model(args: argparse.Namespace, ops: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = zfnet(num_classes=args.classes, width=args.width, head_pool=args.head_pool)
    if ops == "fast":
        use_fast_ops(model)
    elif ops == "nolrn":
        for name in ("norm1", "norm2"):
            model.features._modules[name] = torch.nn.Identity()
    return model


def time_steps(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step after ``warmup`` untimed steps (compilation happens there)."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def run_plain(args, ops: str, images: torch.Tensor, labels: torch.Tensor) -> float:
    device = images.device
    model = build_model(args, ops).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    forward = torch.compile(model) if args.compile else model
    autocast = _autocast(args, device)

    def step() -> None:
        with autocast():
            loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return time_steps(step, args.warmup, args.steps, device)


class StepTimer(pl.Callback):
    """Wall time from the first timed batch's start to the last batch's end, synchronised."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.start, self.end, self.count = warmup, device, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            _sync(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.count += 1
        if batch_idx == trainer.max_steps - 1:  # sync once, like the plain loop
            _sync(self.device)
            self.end = time.perf_counter()


class SameBatch:
    """An iterable of ``count`` copies of one on-device batch (a list would read as many loaders)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, count: int) -> None:
        self.batch, self.count = (images, labels), count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return iter([self.batch] * self.count)


def run_zflight(args, ops: str, images: torch.Tensor, labels: torch.Tensor) -> float:
    device = images.device
    module = ClassifierModule(
        build_model(args, ops),
        args.classes,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="none",
        channels_last=args.channels_last,
        compile=args.compile,
    )
    total = args.warmup + args.steps
    timer = StepTimer(args.warmup, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=args.precision,
            max_steps=total,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=CSVLogger(tmp),
            log_every_n_steps=50,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(module, train_dataloaders=SameBatch(images, labels, total))
    return (timer.end - timer.start) / timer.count


def _autocast(args, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if args.precision == "32-true":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> str:
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    try:
        import triton

        tri = triton.__version__
    except ImportError:
        tri = "absent"
    return (
        f"torch {torch.__version__}, lightning {pl.__version__}, triton {tri}, device {device} "
        f"({name}), threads {torch.get_num_threads()}, cudnn {torch.backends.cudnn.version()}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny CPU-sized run (width 0.25, 64 px)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", type=int, default=None, help="image side")
    p.add_argument("--width", type=float, default=None)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--precision", choices=["bf16-mixed", "32-true"], default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--variants", default="plain,plain-fast,zflight", help=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=None, help="alternating rounds; the best is kept")
    args = p.parse_args(argv)
    small = args.quick or not cuda
    defaults = dict(
        batch=64 if small else 512,
        size=64 if small else 224,
        width=0.25 if small else 1.0,
        steps=10 if small else 30,
        warmup=3 if small else 8,
        precision="32-true" if small else "bf16-mixed",
        compile=not small,
        repeats=1 if cuda and not args.quick else 2,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.head_pool = 6 if args.size >= 200 else 2
    args.variants = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; valid: {', '.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    labels = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    runners = {
        "plain": (run_plain, "torch"),
        "plain-fast": (run_plain, "fast"),
        "plain-nolrn": (run_plain, "nolrn"),
        "zflight": (run_zflight, "fast"),
        "zflight-torchops": (run_zflight, "torch"),
    }
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name in args.variants:
            fn, ops = runners[name]
            seconds = fn(args, ops, images, labels)
            best[name] = min(best.get(name, float("inf")), seconds)
    print(environment(device))
    print(
        f"ZFNet width {args.width}, {args.size} px, {args.classes} classes, batch {args.batch}, "
        f"{args.precision}, compile={args.compile}, channels_last={args.channels_last}, "
        f"{args.steps} timed steps after {args.warmup}, best of {args.repeats}"
    )
    base = best.get("plain")
    print(f"{'variant':<18}{'img/s':>10}{'ms/step':>10}{'vs plain':>10}  what")
    for name in args.variants:
        ratio = f"{base / best[name]:.2f}x" if base else "-"
        print(
            f"{name:<18}{args.batch / best[name]:>10.0f}{best[name] * 1e3:>10.1f}{ratio:>10}  "
            f"{VARIANTS[name]}"
        )


if __name__ == "__main__":
    main()
