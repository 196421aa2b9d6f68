"""ImageFolder data: every counted format is read, unreadable files are skipped with one warning or
stop the run naming them, differing class folders are named."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from zflight.data import DataError, ImageFolderDataModule
from zflight.data.files import bad_file_limit
from zflight.data.modules import IMAGENET_MEAN, IMAGENET_STD

RED, GREEN, BLUE = (200, 10, 10), (10, 200, 10), (10, 10, 200)


def image(path, colour=RED, fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path, format=fmt)


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def folder(root, bad_train: dict[str, bytes] | None = None, good: int = 4):
    """Classes cat (JPEG), dog (PNG only) and owl (BMP and TIFF); ``bad_train`` files in train/cat."""
    for split in ("train", "val"):
        for i in range(good):
            image(root / split / "cat" / f"{i}.jpg", RED)
            image(root / split / "dog" / f"{i}.png", GREEN)
            image(root / split / "owl" / f"{i}.{('bmp', 'tif')[i % 2]}", BLUE)
    for name, data in (bad_train or {}).items():
        (root / "train" / "cat" / name).write_bytes(data)
    return root


def colour_of(x) -> np.ndarray:
    """The 0-255 colour of a normalised (3, H, W) image (its mean)."""
    mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
    return x.float().mean((1, 2)).numpy() * std + mean


@pytest.mark.parametrize("decode", ["workers", "torchvision"])
def test_png_bmp_tiff_and_png_only_classes_are_read(tmp_path, decode, one_thread):
    dm = ImageFolderDataModule(
        str(folder(tmp_path)), image_size=16, resize=20, num_workers=0, decode=decode
    )
    dm.setup("fit")
    assert dm.class_names == ["cat", "dog", "owl"]
    assert len(dm.train_dataset) == len(dm.val_dataset) == 12
    for index, (colour, label, tol) in enumerate(((RED, 0, 4), (GREEN, 1, 1), (BLUE, 2, 1))):
        x, y = dm.val_dataset[4 * index]
        assert y == label and np.allclose(colour_of(x), colour, atol=tol), (label, colour_of(x))


def test_unreadable_files_are_skipped_with_one_warning(tmp_path, capsys, one_thread):
    bad = {"empty.jpg": b"", "text.jpg": b"not an image at all"}
    root = folder(tmp_path, {**bad, "0cut.jpg": jpeg_bytes()[:300]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = ImageFolderDataModule(str(root), image_size=16, resize=20, num_workers=0)
    (w,) = [str(c.message) for c in caught if "image files" in str(c.message)]
    train = root / "train"
    assert w == (
        f"2 of 15 image files under {train} cannot be read: "
        f"{train / 'cat' / 'empty.jpg'} (empty (0 bytes)); "
        f"{train / 'cat' / 'text.jpg'} (not a JPEG, PNG, BMP, WEBP, PPM or TIFF image "
        "(starts with 6e 6f 74 20 61 6e 20 69)); skipping them"
    )
    dm.setup("fit")
    paths = [p for p, _ in dm.train_dataset.samples]
    assert len(paths) == 13 and not any(name in p for p in paths for name in bad)
    # the cut JPEG passes the header check; it is skipped (and named once) when decoded
    cut = paths.index(str(train / "cat" / "0cut.jpg"))
    x, y = dm.train_dataset[cut]
    red = np.allclose(x.float().mean((1, 2)).numpy(), RED, atol=4)  # a uint8 training crop
    assert y == 0 and red, "the next file: a red cat"
    dm.train_dataset[cut]
    err = capsys.readouterr().err
    assert err.count("skipping unreadable image") == 1 and str(train / "cat" / "0cut.jpg") in err


def test_too_many_unreadable_files_stop_the_run_naming_them(tmp_path):
    root = folder(tmp_path, {f"e{i:02d}.jpg": b"" for i in range(11)})
    cat = root / "train" / "cat"
    with pytest.raises(DataError) as info:
        ImageFolderDataModule(str(root), image_size=16, resize=20, num_workers=0)
    message = str(info.value)
    assert message.startswith(
        f"11 of 23 image files under {root / 'train'} cannot be read: {cat / 'e00.jpg'} (empty"
    )
    assert message.endswith(
        f"{cat / 'e09.jpg'} (empty (0 bytes)); and 1 more (more than 10; fix or remove them)"
    )
    assert "\n" not in message


def test_bad_file_limit():
    assert [bad_file_limit(n) for n in (23, 1000, 5000, 1_281_167)] == [10, 10, 50, 100]


def test_differing_class_folders_are_named(tmp_path):
    for split, classes in (("train", ("cat", "dog", "emu")), ("val", ("cat", "fox"))):
        for c in classes:
            image(tmp_path / split / c / "a.jpg")
    with pytest.raises(
        DataError, match=r"differ under .* \(only in train: dog, emu; only in val: fox\)$"
    ):
        ImageFolderDataModule(str(tmp_path), num_workers=0)


def test_entry_point_stops_with_one_line_and_exit_2(tmp_path, capsys):
    from tests.conftest import tiny_overrides
    from zflight.train import main

    root = folder(tmp_path / "data", {f"e{i:02d}.jpg": b"" for i in range(11)})
    code = main(tiny_overrides(tmp_path / "run", "data.name=imagefolder", f"data.root={root}"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "11 of 23 image files" in err, err
    assert not (tmp_path / "run").exists(), "nothing written before the data was checked"
