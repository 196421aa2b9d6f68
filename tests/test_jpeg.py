"""JPEG pipeline: crop geometry, pixel values, flips, and the worker and device paths agreeing."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from zflight.data.jpeg import EncodedImages, JpegPipeline, decode_jpegs


def _jpeg_bytes(array: np.ndarray, fmt: str = "JPEG") -> torch.Tensor:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, quality=95)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _gradient(h: int, w: int) -> np.ndarray:
    """Smooth RGB ramps: red grows to the right, green downwards, blue constant."""
    x = np.linspace(20, 235, w)[None, :].repeat(h, 0)
    y = np.linspace(30, 220, h)[:, None].repeat(w, 1)
    return np.stack([x, y, np.full((h, w), 128.0)], -1).round().astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i, (h, w) in enumerate([(60, 80), (75, 50), (64, 64)]):
            img = (_gradient(h, w).astype(int) + rng.integers(-20, 20, (h, w, 3)) + 40 * c).clip(
                0, 255
            )
            (tmp_path / name / f"{i}.JPEG").write_bytes(
                _jpeg_bytes(img.astype(np.uint8)).numpy().tobytes()
            )
    return tmp_path


def test_paper_boxes_scale_the_shorter_side():
    pipe = JpegPipeline(size=224, resize=256, decode="workers")
    assert pipe.box(375, 500, train=False) == (23, 86, 328, 328)  # round(224 * 375 / 256) = 328
    g = torch.Generator().manual_seed(0)
    boxes = [pipe.box(375, 500, True, g) for _ in range(200)]
    assert {b[2:] for b in boxes} == {(328, 328)}
    tops, lefts = [b[0] for b in boxes], [b[1] for b in boxes]
    assert min(tops) >= 0 and max(tops) <= 375 - 328 and min(lefts) >= 0 and max(lefts) <= 500 - 328
    assert max(lefts) - min(lefts) > 100  # the offset really varies


def test_random_resized_boxes_respect_scale_and_ratio():
    pipe = JpegPipeline(
        crop="random_resized", scale=(0.25, 0.5), ratio=(0.75, 4 / 3), decode="workers"
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        top, left, h, w = pipe.box(300, 400, True, g)
        assert 0 <= top <= 300 - h and 0 <= left <= 400 - w
        assert 0.25 - 0.01 <= h * w / 120000 <= 0.5 + 0.01
        assert 0.75 - 0.02 <= w / h <= 4 / 3 + 0.02
    # impossible ratio: falls back to the central crop clamped to the ratio range
    narrow = JpegPipeline(
        crop="random_resized", scale=(0.99, 1.0), ratio=(2.0, 3.0), decode="workers"
    )
    assert narrow.box(300, 300, True, g) == (75, 0, 150, 300)


def test_validation_crop_matches_torchvision_resize_and_centre_crop():
    image = torch.from_numpy(_gradient(300, 420)).permute(2, 0, 1).contiguous()
    pipe = JpegPipeline(size=112, resize=128, decode="workers")
    ours = pipe.augment([image], train=False)[0].float()
    ref = TF.center_crop(TF.resize(image, 128, antialias=True), 112).float()
    assert ours.shape == ref.shape == (3, 112, 112)
    assert (ours - ref).abs().mean() < 0.4  # on 0-255; a 5-pixel shift of the box gives 0.66


def test_solid_colour_normalises_to_its_closed_form_value():
    colour = (200, 90, 30)
    data = _jpeg_bytes(np.broadcast_to(np.array(colour, np.uint8), (50, 70, 3)).copy())
    pipe = JpegPipeline(size=32, resize=40, decode="device")
    images, labels = pipe.finish(pipe.collate([(data, 3)]), train=True)
    assert (
        images.shape == (1, 3, 32, 32) and images.dtype == torch.float32 and labels.tolist() == [3]
    )
    for c in range(3):
        expected = (colour[c] / 255 - pipe.mean[c]) / pipe.std[c]
        assert abs(images[0, c].mean().item() - expected) < 3 / 255 / pipe.std[c]


def test_flips_happen_in_training_only():
    image = torch.from_numpy(_gradient(40, 40)).permute(2, 0, 1).contiguous()
    always = JpegPipeline(size=40, resize=40, flip=1.0, decode="workers")
    red_train = always.augment([image], train=True)[0, 0].float().mean(0)
    red_val = always.augment([image], train=False)[0, 0].float().mean(0)
    assert red_val[-1] - red_val[0] > 150 and red_train[0] - red_train[-1] > 150
    never = JpegPipeline(size=40, resize=40, flip=0.0, decode="workers")
    assert torch.equal(never.augment([image], train=True), always.augment([image], train=False))


def test_worker_and_device_paths_give_the_same_batch_on_cpu(folder):
    kw = dict(size=24, resize=32, crop="random_resized")
    workers, device = JpegPipeline(**kw, decode="workers"), JpegPipeline(**kw, decode="device")
    ds_w, ds_d = workers.dataset(folder, train=True), device.dataset(folder, train=True)
    assert len(ds_w) == len(ds_d) == 6 and ds_w.classes == ["cat", "dog"]
    torch.manual_seed(7)
    a = workers.finish(workers.collate([ds_w[i] for i in range(6)]), train=True)
    torch.manual_seed(7)
    b = device.finish(device.collate([ds_d[i] for i in range(6)]), train=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].tolist() == [0, 0, 0, 1, 1, 1]


def test_normalized_dataset_gives_probe_ready_images(folder):
    pipe = JpegPipeline(size=24, resize=32, decode="device")
    image, label = pipe.dataset(folder, train=False, normalized=True)[4]
    assert image.dtype == torch.float32 and image.shape == (3, 24, 24) and label == 1
    batch = pipe.collate([pipe.dataset(folder, train=False)[4]])
    assert torch.equal(image, pipe.finish(batch, train=False)[0][0])


def test_encoded_images_are_not_moved_by_lightning(folder):
    pipe = JpegPipeline(decode="device")
    batch = pipe.collate([pipe.dataset(folder, train=False)[i] for i in range(2)])
    moved = move_data_to_device(batch, torch.device("meta"))
    assert moved[1].device.type == "meta"
    assert isinstance(moved[0], EncodedImages) and moved[0] is batch[0]
    assert moved[0].buffer.device.type == "cpu" and len(moved[0]) == 2


def test_grayscale_jpeg_and_misnamed_png_decode_to_rgb():
    gray = _jpeg_bytes(np.full((20, 30), 77, np.uint8))
    png = _jpeg_bytes(_gradient(20, 30), fmt="PNG")
    out = decode_jpegs([gray, png], "cpu")
    assert [tuple(o.shape) for o in out] == [(3, 20, 30), (3, 20, 30)]
    assert torch.equal(out[0][0], out[0][1]) and abs(out[0].float().mean().item() - 77) < 2
    assert torch.equal(out[1], torch.from_numpy(_gradient(20, 30)).permute(2, 0, 1))


def test_encoded_images_round_trip_the_files():
    files = [torch.arange(5, dtype=torch.uint8), torch.arange(9, 12, dtype=torch.uint8)]
    enc = EncodedImages.from_files(files)
    assert enc.ends.tolist() == [5, 8] and len(enc) == 2
    assert [d.tolist() for d in enc.data] == [[0, 1, 2, 3, 4], [9, 10, 11]]


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_dataloader_with_workers_yields_normalised_batches(folder, decode):
    pipe = JpegPipeline(size=16, resize=20, decode=decode)
    loader = DataLoader(
        pipe.dataset(folder, train=True),
        batch_size=3,
        shuffle=False,
        collate_fn=pipe.collate,
        num_workers=2,
        timeout=60,
    )
    batches = [pipe.finish(b, train=True) for b in loader]
    assert [b[0].shape for b in batches] == [(3, 3, 16, 16)] * 2
    assert batches[0][1].tolist() == [0, 0, 0] and batches[1][1].tolist() == [1, 1, 1]
    pixels = torch.cat([b[0] for b in batches])
    low = (0 - max(pipe.mean)) / min(pipe.std)
    assert pixels.min() >= low - 1e-4 and math.isfinite(pixels.abs().max().item())


def test_bad_options_fail():
    with pytest.raises(ValueError, match="crop must be"):
        JpegPipeline(crop="ten")
    with pytest.raises(ValueError, match="decode must be"):
        JpegPipeline(decode="gpu")
    assert JpegPipeline().decode == ("device" if torch.cuda.is_available() else "workers")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvjpeg)")
def test_cuda_decode_matches_cpu_within_jpeg_tolerance(folder):
    pipe = JpegPipeline(size=24, resize=32, decode="device")
    batch = pipe.collate([pipe.dataset(folder, train=False)[i] for i in range(6)])
    cpu = pipe.finish(batch, train=False)[0]
    cuda = pipe.finish((batch[0], batch[1].cuda()), train=False)[0].cpu()
    assert (cuda - cpu).abs().mean() < 4 / 255 / min(pipe.std)
