"""The embedded shapes data set: determinism, masks, balance; the ImageFolder layout checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zflight.data import CLASSES, ShapesDataModule, ShapesDataset, check_image_folder
from zflight.data.shapes import _inside, _params, render


def test_deterministic_per_index_and_seed():
    a = ShapesDataset(12, image_size=32, seed=3)
    b = ShapesDataset(12, image_size=32, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    # sample i does not depend on how many samples were built, or in which chunk
    c = ShapesDataset(5, image_size=32, seed=3, chunk=2)
    assert torch.equal(a.images[:5], c.images) and torch.equal(a.masks[:5], c.masks)
    d = ShapesDataset(12, image_size=32, seed=4)
    assert not torch.equal(a.images, d.images)
    v = ShapesDataset(12, image_size=32, seed=3, split=1)
    assert not torch.equal(a.images, v.images)


def test_labels_balanced_and_items():
    ds = ShapesDataset(40, image_size=32)
    assert torch.bincount(ds.labels).tolist() == [5] * 8
    image, label, mask = ds[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == 3 and mask.shape == (32, 32) and mask.dtype == torch.bool
    assert ds.class_names == list(CLASSES)


def test_mask_marks_exactly_the_object_colour():
    """Inside the mask the pixels are the object's colour (up to shading and noise); outside they are not."""
    params = np.stack([_params(0, 0, i, 8) for i in range(16)])
    images, masks = render(params, 64)
    for i in range(16):
        obj = torch.as_tensor(params[i, 5:8], dtype=torch.float32) * 255
        m = masks[i]
        assert 0.02 < m.float().mean() < 0.5, "object covers a sensible share of the image"
        inside = images[i][:, m].float().mean(1)
        assert (inside - obj).abs().max() < 0.2 * 255
        far = (images[i].float() - obj.view(3, 1, 1)).abs().sum(0)
        # the object colour is kept far from the background's, so the mask is where the colour is
        assert far[m].float().mean() < far[~m].float().mean()


def test_shape_areas_match_geometry():
    """Membership tests against closed-form areas (unit-radius frame, fine grid)."""
    n = 801
    c = torch.linspace(-1, 1, n)
    v, u = torch.meshgrid(c, c, indexing="ij")
    cell = (2 / (n - 1)) ** 2
    area = {name: _inside(k, u, v).float().sum().item() * cell for k, name in enumerate(CLASSES)}
    assert area["circle"] == pytest.approx(math.pi * 0.95**2, rel=0.01)
    assert area["square"] == pytest.approx(1.5**2, rel=0.01)
    assert area["triangle"] == pytest.approx(3 * math.sqrt(3) / 4, rel=0.01)  # circumradius 1
    assert area["ring"] == pytest.approx(math.pi * (0.95**2 - 0.55**2), rel=0.02)
    assert area["cross"] == pytest.approx(2 * 0.56 * 1.9 - 0.56**2, rel=0.02)


def test_datamodule_cache_roundtrip(tmp_path):
    dm = ShapesDataModule(
        train_size=16, val_size=8, image_size=32, batch_size=4, cache_dir=str(tmp_path)
    )
    dm.setup("fit")
    assert len(list(tmp_path.glob("shapes-*.pt"))) == 2
    dm2 = ShapesDataModule(
        train_size=16, val_size=8, image_size=32, batch_size=4, cache_dir=str(tmp_path)
    )
    dm2.setup("fit")
    assert torch.equal(dm.train_dataset.images, dm2.train_dataset.images)
    images, labels, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4,) and masks.shape == (4, 32, 32)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a directory.*ImageNet layout"):
        check_image_folder(tmp_path / "missing")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        check_image_folder(tmp_path)
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="without images: cat"):
        check_image_folder(tmp_path)
    from PIL import Image

    for split in ("train", "val"):
        Image.new("RGB", (300, 260)).save(tmp_path / split / "cat" / "a.jpg")
    assert check_image_folder(tmp_path) == ["cat"]


def test_image_folder_preprocessing(tmp_path):
    from PIL import Image

    from zflight.data import ImageFolderDataModule

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (300, 260), (200, 10, 10)).save(tmp_path / split / cls / "x.jpg")
    dm = ImageFolderDataModule(str(tmp_path), image_size=224, num_workers=0, batch_size=2)
    dm.setup("fit")
    x, y = dm.val_dataset[0]
    assert x.shape == (3, 224, 224) and dm.num_classes == 2
    dm10 = ImageFolderDataModule(str(tmp_path), image_size=224, num_workers=0, ten_crop=True)
    dm10.setup("validate")
    assert dm10.val_dataset[0][0].shape == (10, 3, 224, 224)


def test_texture_labels_tie_the_fine_grating_orientation_to_the_class():
    import math

    import numpy as np

    from zflight.data.shapes import LABEL_BAND, NOISE_SEED, _params

    spacing = math.pi / 8
    for i in range(40):
        tied, fine, plain = (
            _params(3, 0, i, 8, f, t) for f, t in ((False, True), (True, False), (False, False))
        )
        freq, angle = tied[NOISE_SEED + 1], tied[NOISE_SEED + 2]
        assert LABEL_BAND[0] <= freq <= LABEL_BAND[1]
        assert abs(angle - (i % 8 + 0.5) * spacing) <= 0.3 * spacing + 1e-12
        # the same draws: the rest of the sample, the grating's phase and amplitude are unchanged
        assert np.array_equal(tied[: NOISE_SEED + 1], plain)
        assert np.array_equal(tied[NOISE_SEED + 3 :], fine[NOISE_SEED + 3 :])
