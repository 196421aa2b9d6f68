"""The shapes data set written as an ImageNet-layout folder of JPEGs, with its object masks beside
it (``zflight.data.masks``), so that the ImageNet recipe can be rehearsed with scores that work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from zflight.data.shapes import ShapesDataset


def write_image_folder(
    root: Path,
    num_classes: int = 8,
    train_per_class: int = 8,
    val_per_class: int = 4,
    size: int = 256,
    seed: int = 0,
    quality: int = 90,
    masks: bool = True,
) -> dict[str, int]:
    """Write ``root/{train,val}/<class>/<n>.JPEG`` and ``root/masks/{train,val}/<class>/<n>.png``.

    Images are the shapes generator's at ``size`` px (a pure function of seed, split and index);
    masks are 0/255 grayscale PNGs of the same size (``masks=False``: none, as in ImageNet).
    Returns the number of images per split.
    """
    counts = {}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        data = ShapesDataset(
            per_class * num_classes, size, seed, split=int(split == "val"), num_classes=num_classes
        )
        for i in range(len(data)):
            name = data.class_names[int(data.labels[i])]
            stem = f"{split}_{i:06d}"
            image_dir, mask_dir = root / split / name, root / "masks" / split / name
            image_dir.mkdir(parents=True, exist_ok=True)
            pixels = data.images[i].permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(image_dir / f"{stem}.JPEG", quality=quality)
            if masks:
                mask_dir.mkdir(parents=True, exist_ok=True)
                mask = data.masks[i].numpy().astype(np.uint8) * 255
                Image.fromarray(mask).save(mask_dir / f"{stem}.png")
        counts[split] = len(data)
    return counts
