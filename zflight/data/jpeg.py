"""JPEG folders decoded in batches on the training device, with decoding in workers as the fallback.

``decode="device"``: DataLoader workers only read file bytes; after the batch reaches the trainer,
``JpegPipeline.finish`` decodes the whole batch at once (nvjpeg through ``torchvision.io.decode_jpeg``
on CUDA), crops, resizes, flips and normalises it on the device. ``decode="workers"``: each worker
decodes and crops with libjpeg and hands over uint8 crops (4x fewer bytes than floats); ``finish``
only normalises. ``"auto"`` picks the device path when CUDA is available. Both draw the same
crops from the same random numbers, so they differ only by interpolation rounding.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

from zflight.data.files import index_images, load_or_skip

Box = tuple[int, int, int, int]  # top, left, height, width


class EncodedImages:
    """A batch of encoded image files: one flat uint8 CPU buffer and the files' end offsets.

    One buffer crosses from the DataLoader workers in one shared-memory block (not one per file).
    It has no ``.to``, so Lightning's batch transfer leaves it on the CPU, where
    ``decode_jpeg(..., device="cuda")`` wants its input.
    """

    def __init__(self, buffer: torch.Tensor, ends: torch.Tensor) -> None:
        self.buffer, self.ends = buffer, ends

    @classmethod
    def from_files(cls, files: list[torch.Tensor]) -> EncodedImages:
        ends = torch.tensor([f.numel() for f in files], dtype=torch.long).cumsum(0)
        return cls(torch.cat([f.flatten() for f in files]), ends)

    @property
    def data(self) -> list[torch.Tensor]:
        """The files as 1-D uint8 views of the buffer."""
        starts = [0, *self.ends[:-1].tolist()]
        return [self.buffer[a:b] for a, b in zip(starts, self.ends.tolist())]

    def __len__(self) -> int:
        return len(self.ends)


def decode_jpegs(data: list[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """RGB uint8 (3, H, W) images on ``device``; one batched nvjpeg call on CUDA.

    If the batched decoder rejects a file (a PNG named .JPEG, a CMYK JPEG), that batch is decoded
    file by file on the CPU instead.
    """
    device = torch.device(device)
    try:
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        images = [_decode_one(d, device) for d in data]
    return list(images)


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One file of any format: torchvision's decoders (JPEG, PNG, WEBP, GIF), else PIL (BMP, PPM,
    TIFF)."""
    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        from PIL import Image

        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            image = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    return image.to(device)


def resized_crop(image: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """The ``box`` of a (3, H, W) uint8 image resampled to ``size`` x ``size`` (bilinear, antialiased).

    uint8 out on CPU (PyTorch's SIMD uint8 path); float in [0, 255] on other devices.
    """
    top, left, h, w = box
    crop = image[None, :, top : top + h, left : left + w]
    if crop.device.type != "cpu":
        crop = crop.float()
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0]


@dataclass
class JpegPipeline:
    """Decode, crop, flip and normalise ImageNet-layout JPEGs, in workers or on the device.

    Args:
        size: side of the output crops.
        resize: ``crop="paper"``: the shorter side is scaled to ``resize`` and a random (train) or
            central (val) ``size`` square is cut, as Zeiler & Fergus (256 -> 224).
        crop: ``"paper"`` or ``"random_resized"`` (area ``scale``, aspect ``ratio``; val as paper).
        flip: probability of a horizontal flip in training.
        mean, std: normalisation (0-1 pixel scale).
        decode: ``"device"``, ``"workers"`` or ``"auto"`` (device when CUDA is available).
    """

    size: int = 224
    resize: int = 256
    crop: str = "paper"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    decode: str = "auto"

    def __post_init__(self) -> None:
        if self.crop not in ("paper", "random_resized"):
            raise ValueError(f"crop must be 'paper' or 'random_resized'; got {self.crop!r}")
        if self.decode not in ("auto", "device", "workers"):
            raise ValueError(f"decode must be 'auto', 'device' or 'workers'; got {self.decode!r}")
        if self.decode == "auto":
            self.decode = "device" if torch.cuda.is_available() else "workers"

    def box(
        self, height: int, width: int, train: bool, generator: torch.Generator | None = None
    ) -> Box:
        """Crop box in the original image: random in training, central for validation."""
        if train and self.crop == "random_resized":
            return self._random_resized_box(height, width, generator)
        side = min(height, width, max(1, round(self.size * min(height, width) / self.resize)))
        if not train:
            return (height - side) // 2, (width - side) // 2, side, side
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        return top, left, side, side

    def _random_resized_box(
        self, height: int, width: int, generator: torch.Generator | None
    ) -> Box:
        """torchvision's RandomResizedCrop parameters: 10 tries, then the central crop."""
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            u = torch.rand(2, generator=generator).tolist()
            target = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_lo + u[1] * (log_hi - log_lo))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return top, left, h, w
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def augment(
        self, images: list[torch.Tensor], train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Crop, resize and flip decoded uint8 images into one (B, 3, size, size) batch (0-255).

        Random numbers are drawn per image, box then flip, so the worker and device paths draw
        the same crops from the same generator.
        """
        crops, flips = [], []
        for image in images:
            box = self.box(image.shape[1], image.shape[2], train, generator)
            crops.append(resized_crop(image, box, self.size))
            flip = train and self.flip > 0 and float(torch.rand(1, generator=generator)) < self.flip
            flips.append(flip)
        out = torch.stack(crops)
        flipped = torch.tensor(flips, dtype=torch.bool).nonzero().flatten().to(out.device)
        out[flipped] = out[flipped].flip(-1)
        return out

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """0-255 images (uint8 or float) to float32, normalised with ``mean`` and ``std``."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1) * 255
        return (images.float() - mean) / std

    def load(
        self, data: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Worker side of ``decode="workers"``: bytes to one uint8 (3, size, size) crop."""
        image = decode_jpegs([data], "cpu")[0]
        return self.augment([image], train, generator)[0]

    def dataset(
        self,
        root: str | Path,
        train: bool,
        normalized: bool = False,
        samples: list[tuple[str, int]] | None = None,
    ) -> JpegFolder:
        """The images of ``root/<class>/`` as this pipeline's DataLoader workers produce them.

        ``normalized=True``: finished float images instead, decoded in the caller (for the
        visual callbacks' probe set, which indexes the validation data set directly).
        ``samples``: (path, label) pairs already indexed (and checked) by the caller.
        """
        if normalized:
            return JpegFolder(root, self, train, normalize=True, samples=samples)
        return JpegFolder(root, self if self.decode == "workers" else None, train, samples=samples)

    def collate(self, samples: list[tuple[torch.Tensor, int]]) -> tuple[Any, torch.Tensor]:
        """``DataLoader`` collate_fn: ``(EncodedImages, labels)`` or ``(uint8 images, labels)``."""
        labels = torch.tensor([s[1] for s in samples], dtype=torch.long)
        if self.decode == "device":
            return EncodedImages.from_files([s[0] for s in samples]), labels
        return torch.stack([s[0] for s in samples]), labels

    def finish(
        self, batch: tuple[Any, torch.Tensor], train: bool, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Call from ``on_after_batch_transfer``: normalised float images on the labels' device."""
        images, labels = batch[0], batch[1]
        if isinstance(images, EncodedImages):
            decoded = decode_jpegs(images.data, labels.device)
            images = self.augment(decoded, train, generator)
        return self.normalize(images.to(labels.device)), labels


class JpegFolder(Dataset):
    """ImageFolder-layout images: ``(file bytes, label)``, or with a pipeline ``(uint8 crop, label)``,
    or with ``normalize`` too ``(normalised float crop, label)``.

    Every format of ``files.IMAGE_SUFFIXES`` is read (JPEGs fastest). ``samples`` skips indexing the
    folder; a file that fails to decode in a worker is skipped and named (``load_or_skip``).
    """

    def __init__(
        self,
        root: str | Path,
        pipeline: JpegPipeline | None = None,
        train: bool = False,
        normalize: bool = False,
        samples: list[tuple[str, int]] | None = None,
    ) -> None:
        if normalize and pipeline is None:
            raise ValueError("normalize=True needs a pipeline")
        self.root = Path(root)
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        if samples is None:
            samples = index_images(self.root, self.classes).samples
        self.samples = samples
        self.pipeline, self.train, self.normalize = pipeline, train, normalize

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.pipeline is None:
            return read_file(self.samples[index][0]), self.samples[index][1]
        return load_or_skip(self.samples, index, self._load)

    def _load(self, path: str) -> torch.Tensor:
        image = self.pipeline.load(read_file(path), self.train)
        if self.normalize:
            image = self.pipeline.normalize(image[None])[0]
        return image
