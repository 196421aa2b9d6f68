"""Object masks kept beside an ImageNet-layout folder, so that localisation scores work on it.

``<root>/masks/<split>/<class>/<stem>.png`` holds the mask of ``<root>/<split>/<class>/<stem>.*``:
a grayscale image of the same size, object where it is above 127. Where the validation split has
such a folder, the validation samples the visual callbacks draw from carry the mask, cut and
resized exactly as the image is (the paper's centre crop: resize the shorter side to ``resize``,
then the central ``size`` square), as the shapes data set's do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


def mask_folder(root: Path, split: str = "val") -> Path | None:
    """``root/masks/split`` when it exists, else None."""
    folder = root / "masks" / split
    return folder if folder.is_dir() else None


def mask_path(image: str, split_dir: Path, masks: Path) -> Path:
    """Where the mask of ``image`` (a file under ``split_dir``) lives under ``masks``."""
    relative = Path(image).relative_to(split_dir)
    return masks / relative.with_suffix(".png")


def centre_box(height: int, width: int, size: int, resize: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the validation crop in the original image: the central square that
    becomes ``size`` after the shorter side is scaled to ``resize``."""
    side = min(height, width, max(1, round(size * min(height, width) / resize)))
    return (height - side) // 2, (width - side) // 2, side, side


def load_mask(path: Path, size: int, resize: int) -> torch.Tensor:
    """The bool (size, size) mask of the validation crop (nearest-neighbour resampling)."""
    from PIL import Image

    with Image.open(path) as im:
        mask = torch.from_numpy(np.asarray(im.convert("L")) > 127)
    top, left, h, w = centre_box(mask.shape[0], mask.shape[1], size, resize)
    crop = mask[top : top + h, left : left + w].float()[None, None]
    return F.interpolate(crop, size=(size, size), mode="nearest")[0, 0] > 0.5


class WithMasks(Dataset):
    """``(image, label, mask)`` for each validation sample of ``dataset``, whose samples are
    ``samples`` (path, label) under ``split_dir``; masks from ``masks`` (``mask_path``)."""

    def __init__(
        self,
        dataset: Any,
        samples: list[tuple[str, int]],
        split_dir: Path,
        masks: Path,
        size: int,
        resize: int,
    ) -> None:
        self.dataset, self.samples = dataset, samples
        self.split_dir, self.masks, self.size, self.resize = split_dir, masks, size, resize

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, torch.Tensor]:
        image, label = self.dataset[index][:2]
        path = mask_path(self.samples[index][0], self.split_dir, self.masks)
        return image, label, load_mask(path, self.size, self.resize)
