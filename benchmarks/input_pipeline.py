"""Input pipeline throughput for ImageNet-layout JPEG folders, without any training.

Generates a folder of ImageNet-like JPEGs (about 500x375, quality 90, textured so they compress
like photographs) and measures images/s until normalised 224x224 batches sit on the device:

- ``torchvision-pil``: ``ImageFolder`` + PIL + Resize/RandomCrop/Flip/ToTensor/Normalize in the
  workers (what a plain torchvision setup does; floats cross the process boundary).
- ``workers``: ``JpegPipeline(decode="workers")``: libjpeg-turbo decode and uint8 crop in the
  workers, normalised on the device.
- ``device``: ``JpegPipeline(decode="device")``: workers only read bytes; the batch is decoded on
  the device (nvjpeg on CUDA; on CPU the main process decodes, one core).

    python benchmarks/input_pipeline.py --quick       # 96 images, a few seconds per pipeline
    python benchmarks/input_pipeline.py --images 2048 --workers 8
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from zflight.data.jpeg import JpegPipeline

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_folder(root: Path, count: int, classes: int = 4, seed: int = 0) -> int:
    """Write ``count`` photo-like JPEGs (500x375 or 375x500, quality 90); returns total bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(count):
        h, w = (375, 500) if i % 4 else (500, 375)
        coarse = rng.uniform(0, 255, (h // 25 + 1, w // 25 + 1, 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
        texture = rng.normal(0, 18, (h, w, 1)) * rng.uniform(0.3, 1.0, (1, 1, 3))
        image = np.clip(base + texture, 0, 255).astype(np.uint8)
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img_{i:05d}.JPEG"
        Image.fromarray(image).save(path, quality=90)
        total += path.stat().st_size
    return total


def torchvision_loader(root: Path, batch: int, workers: int) -> DataLoader:
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose(
        [
            T.Resize(256),
            T.RandomCrop(224),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    return DataLoader(
        datasets.ImageFolder(str(root), tf),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def pipeline_loader(pipe: JpegPipeline, root: Path, batch: int, workers: int) -> DataLoader:
    return DataLoader(
        pipe.dataset(root, train=True),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=pipe.collate,
        pin_memory=torch.cuda.is_available() and pipe.decode == "workers",
    )


def measure(loader: DataLoader, finish, device: torch.device, epochs: int) -> float:
    """Images/s over ``epochs`` passes after one untimed pass (worker start-up, page cache)."""

    def one_pass() -> int:
        n = 0
        for images, labels in loader:
            if isinstance(images, torch.Tensor):
                images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            images, labels = finish((images, labels))
            n += labels.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return n

    one_pass()
    start = time.perf_counter()
    count = sum(one_pass() for _ in range(epochs))
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="96 images, one timed pass")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--epochs", type=int, default=2, help="timed passes over the folder")
    p.add_argument("--dir", type=Path, default=None, help="reuse/keep the generated folder here")
    p.add_argument("--pipelines", default="torchvision-pil,workers,device")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.batch = 96, 1, 32
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp) / "jpegs"
        existing = sorted(root.glob("*/*.JPEG")) if root.exists() else []
        if len(existing) >= args.images:
            size = sum(f.stat().st_size for f in existing)
            args.images = len(existing)
        else:
            t0 = time.perf_counter()
            size = make_folder(root, args.images)
            print(f"generated {args.images} JPEGs in {time.perf_counter() - t0:.1f} s")
        rows = {}
        for name in args.pipelines.split(","):
            if name == "torchvision-pil":
                loader, finish = torchvision_loader(root, args.batch, args.workers), lambda b: b
            elif name in ("workers", "device"):
                pipe = JpegPipeline(decode=name, mean=MEAN, std=STD)
                loader = pipeline_loader(pipe, root, args.batch, args.workers)
                finish = lambda b, pipe=pipe: pipe.finish(b, train=True)  # noqa: E731
            else:
                p.error(f"unknown pipeline {name!r}; valid: torchvision-pil, workers, device")
            rows[name] = measure(loader, finish, device, args.epochs)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    print(
        f"torch {torch.__version__}, device {device} ({name}), {os.cpu_count()} CPUs, "
        f"{args.workers} workers, torch threads {torch.get_num_threads()}"
    )
    print(
        f"{args.images} JPEGs, mean {size / args.images / 1024:.0f} KiB, batch {args.batch}, "
        f"224x224 train crops, {args.epochs} timed pass(es)"
    )
    base = rows.get("torchvision-pil")
    print(f"{'pipeline':<18}{'img/s':>10}{'vs torchvision':>16}")
    for name, rate in rows.items():
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"{name:<18}{rate:>10.0f}{ratio:>16}")


if __name__ == "__main__":
    main()
