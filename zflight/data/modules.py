"""LightningDataModules: the embedded shapes data set (default) and ImageNet-layout folders."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader

from zflight.data.files import (
    DataError,
    PilImages,
    image_files,
    report_bad_files,
)
from zflight.data.index_cache import cached_index
from zflight.data.masks import WithMasks, mask_folder, mask_path
from zflight.data.shapes import ShapesDataset


@rank_zero_only
def say(text: str) -> None:
    """One line on the console from rank 0 (printed, not logged: a run's console hides
    Lightning's info messages, and rendering the data takes seconds the user should not wonder
    about)."""
    print(text, flush=True)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ShapesDataModule(pl.LightningDataModule):
    """Synthetic shapes with object masks; rendered once, cached on disk, flipped at random in training.

    Batches are ``(images, labels, masks)``.
    """

    def __init__(
        self,
        train_size: int = 16000,
        val_size: int = 2000,
        image_size: int = 64,
        num_classes: int = 8,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = "~/.cache/zflight",
        fine_texture: bool = False,
        texture_labels: bool = False,
    ) -> None:
        super().__init__()
        self.fine_texture = fine_texture
        self.texture_labels = texture_labels
        self.train_size, self.val_size, self.image_size = train_size, val_size, image_size
        self.num_classes, self.batch_size, self.num_workers, self.seed = (
            num_classes,
            batch_size,
            num_workers,
            seed,
        )
        self.cache_dir = Path(os.path.expanduser(cache_dir)) if cache_dir else None
        self.mean, self.std = (0.5, 0.5, 0.5), (0.3, 0.3, 0.3)
        self.train_dataset: ShapesDataset | None = None
        self.val_dataset: ShapesDataset | None = None

    @property
    def class_names(self) -> list[str]:
        from zflight.data.shapes import CLASSES

        return list(CLASSES[: self.num_classes])

    def _dataset(self, length: int, split: int) -> ShapesDataset:
        args = dict(
            length=length,
            image_size=self.image_size,
            seed=self.seed,
            split=split,
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            fine_texture=self.fine_texture,
        )
        if self.texture_labels:  # a new cache key only when on: existing caches stay valid
            args["texture_labels"] = True
        if self.cache_dir is None:
            return ShapesDataset(**args)
        key = hashlib.sha1(repr(sorted(args.items()) + [SHAPES_VERSION]).encode()).hexdigest()[:16]
        path = self.cache_dir / f"shapes-{key}.pt"
        if path.exists():
            try:
                return torch.load(path, weights_only=False)
            except Exception:
                path.unlink(missing_ok=True)
        what = f"{length} {('training', 'validation')[split]} images ({self.image_size} px)"
        say(f"shapes: rendering {what} once; later runs read them from {path}")
        start = time.perf_counter()
        ds = ShapesDataset(**args)
        say(f"shapes: rendered {what} in {time.perf_counter() - start:.1f} s")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(ds, tmp)
            tmp.replace(path)
        except OSError:
            pass
        return ds

    def setup(self, stage: str | None = None) -> None:
        if self.val_dataset is None:
            self.val_dataset = self._dataset(self.val_size, split=1)
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(self.train_size, split=0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_dataset,
            batch_size=self.batch_size * 2,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            images, labels, masks = batch
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
            masks = torch.where(flip.view(-1, 1, 1), masks.flip(-1), masks)
            batch = (images, labels, masks)
        return batch


SHAPES_VERSION = 2  # bump when the renderer changes so stale caches are not reused


class ImageFolderDataModule(pl.LightningDataModule):
    """ImageNet-layout folders (``root/train/<class>/*.JPEG``, ``root/val/<class>/*.JPEG``) with the
    paper's preprocessing: resize 256, random 224 crops and flips; centre crop (or ten crops) to validate.

    ``decode``: ``"auto"`` (JPEGs decoded in batches on the GPU when there is one, else in the
    DataLoader workers; see ``zflight.data.jpeg``), ``"device"``, ``"workers"``, or
    ``"torchvision"`` (PIL transforms; also used for ten-crop evaluation). With ``cache_dir`` the
    index of each split is kept there, keyed by the folder's state, and built by one process per
    machine (``zflight.data.index_cache``). Every format of
    ``IMAGE_SUFFIXES`` is read. Files are checked when the module is built: unreadable ones are
    skipped with one warning naming them, or past ``files.bad_file_limit`` raise ``DataError``.
    Batches are ``(images, labels)``; with ``ten_crop`` validation images are (B, 10, 3, 224, 224).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        resize: int = 256,
        batch_size: int = 128,
        num_workers: int = 8,
        ten_crop: bool = False,
        decode: str = "auto",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if decode not in ("auto", "device", "workers", "torchvision"):
            raise ValueError(
                f"data.decode must be auto, device, workers or torchvision; got {decode!r}"
            )
        self.root, self.image_size, self.resize = Path(os.path.expanduser(root)), image_size, resize
        self.batch_size, self.num_workers, self.ten_crop = batch_size, num_workers, ten_crop
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.train_dataset = self.val_dataset = self._val_loader_dataset = None
        self.pipe = None
        if decode != "torchvision" and not ten_crop:
            from zflight.data.jpeg import JpegPipeline

            self.pipe = JpegPipeline(
                size=image_size, resize=resize, mean=self.mean, std=self.std, decode=decode
            )
        self.class_names: list[str] = check_image_folder(self.root)
        cache = Path(os.path.expanduser(cache_dir)) if cache_dir else None
        self.index = {
            s: cached_index(self.root / s, self.class_names, cache) for s in ("train", "val")
        }
        for split, index in self.index.items():
            report_bad_files(index, self.root / split)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        self._setup(stage)
        self._attach_masks()

    def _attach_masks(self) -> None:
        """Validation samples carry their object masks when ``root/masks/val`` has one for each."""
        masks = mask_folder(self.root)
        if masks is None or self.ten_crop or isinstance(self.val_dataset, WithMasks):
            return
        samples, split_dir = self.index["val"].samples, self.root / "val"
        missing = [p for p, _ in samples if not mask_path(p, split_dir, masks).is_file()]
        if missing:
            rank_zero_warn(
                f"{len(missing)} of {len(samples)} validation images have no mask under {masks} "
                f"(first: {missing[0]}); scoring against masks is off"
            )
            return
        self.val_dataset = WithMasks(
            self.val_dataset, samples, split_dir, masks, self.image_size, self.resize
        )

    def _setup(self, stage: str | None) -> None:
        if self.pipe is not None:
            val, train = self.index["val"].samples, self.index["train"].samples
            self.val_dataset = self.pipe.dataset(
                self.root / "val", train=False, normalized=True, samples=val
            )
            self._val_loader_dataset = self.pipe.dataset(self.root / "val", False, samples=val)
            if stage in (None, "fit"):
                self.train_dataset = self.pipe.dataset(self.root / "train", True, samples=train)
            return
        from torchvision import transforms as T

        norm = T.Normalize(self.mean, self.std)
        if self.ten_crop:
            val_tf = T.Compose(
                [
                    T.Resize(self.resize),
                    T.TenCrop(self.image_size),
                    T.Lambda(
                        lambda crops: torch.stack([norm(T.functional.to_tensor(c)) for c in crops])
                    ),
                ]
            )
        else:
            val_tf = T.Compose(
                [T.Resize(self.resize), T.CenterCrop(self.image_size), T.ToTensor(), norm]
            )
        self.val_dataset = self._val_loader_dataset = PilImages(self.index["val"].samples, val_tf)
        if stage in (None, "fit"):
            train_tf = T.Compose(
                [
                    T.Resize(self.resize),
                    T.RandomCrop(self.image_size),
                    T.RandomHorizontalFlip(),
                    T.ToTensor(),
                    norm,
                ]
            )
            self.train_dataset = PilImages(self.index["train"].samples, train_tf)

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        pin = self.pipe is None or self.pipe.decode == "workers"
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            pin_memory=pin and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=self.pipe.collate if self.pipe is not None else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._val_loader_dataset, shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.pipe is None:
            return batch
        return self.pipe.finish(batch, train=self.trainer is not None and self.trainer.training)


def check_image_folder(root: Path) -> list[str]:
    """Class names of an ImageNet-layout folder, or a ValueError saying what layout was expected
    (a ``DataError`` naming the classes when train and val differ)."""
    layout = (
        f"expected {root}/train/<class>/<image> and {root}/val/<class>/<image> (ImageNet layout)"
    )
    if not root.is_dir():
        raise ValueError(f"data.root={str(root)!r} is not a directory; {layout}")
    found = {}
    for split in ("train", "val"):
        d = root / split
        names = sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
        if not names:
            raise ValueError(f"{d} has no class folders; {layout}")
        empty = [n for n in names if not image_files(d / n)]
        if empty:
            raise ValueError(
                f"{d} has class folders without images: {', '.join(empty[:5])}; {layout}"
            )
        found[split] = names
    if found["train"] != found["val"]:
        only = [
            f"only in {a}: {', '.join(sorted(set(found[a]) - set(found[b]))[:10])}"
            for a, b in (("train", "val"), ("val", "train"))
            if set(found[a]) - set(found[b])
        ]
        raise DataError(f"train and val class folders differ under {root} ({'; '.join(only)})")
    return found["train"]
