"""Streaming top-k mining against a one-shot top-k over the whole data set, merging, cropping."""

from __future__ import annotations

import pytest
import torch

from zflight.analysis.topk import (
    StreamingTopK,
    TopK,
    crop,
    image_keys,
    pool_keeps_maximum,
    unit_boxes,
)


def _data(n: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and the (N, C, h, w) activations a conv + ReLU gives them."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 8, 8, generator=g)
    weight = torch.randn(6, 3, 3, 3, generator=g)
    acts = torch.nn.functional.conv2d(images, weight, stride=2).relu()
    return images, acts


def _stream(images, acts, k, channels, batch_sizes):
    miner = StreamingTopK(k, channels)
    start = 0
    for b in batch_sizes:
        miner.update(acts[start : start + b], images[start : start + b])
        start += b
    assert start == len(images)
    return miner.result().sorted()


def _global(acts, k):
    best, where = acts.flatten(2).max(dim=2)
    values, index = best.t().topk(min(k, len(acts)), dim=1)
    return values, where.t().gather(1, index), index


@pytest.mark.parametrize(
    "k,batches", [(9, [7] * 7 + [1]), (3, [50]), (9, [4] * 12 + [2]), (1, [5] * 10)]
)
def test_streaming_equals_one_shot_topk(k, batches):
    images, acts = _data()
    channels = [1, 4, 5]
    top = _stream(images, acts, k, channels, batches)
    values, positions, index = _global(acts, k)
    torch.testing.assert_close(top.values[channels], values[channels])
    assert torch.equal(top.positions[channels], positions[channels])
    _check_maxima_only(top, acts, channels)
    for f, c in enumerate(channels):
        assert torch.equal(top.images[f], images[index[c]])
    assert top.map_size == (3, 3)
    assert top.images.shape == (3, k, 3, 8, 8)


def _check_maxima_only(top, acts, channels):
    """Every channel's maximum in column 0; rows not stored hold nothing else."""
    torch.testing.assert_close(top.values[:, 0], acts.amax(dim=(0, 2, 3)))
    others = [c for c in range(acts.shape[1]) if c not in channels]
    assert torch.isinf(top.values[others, 1:]).all() and (top.positions[others] == -1).all()


def test_fewer_images_than_k_leaves_empty_slots():
    images, acts = _data(n=5)
    top = _stream(images, acts, 9, [0], [2, 3])
    assert torch.isinf(top.values[:, 5:]).all() and (top.values[:, 5:] < 0).all()
    values, _, index = _global(acts, 9)
    torch.testing.assert_close(top.values[[0], :5], values[[0]])
    _check_maxima_only(top, acts, [0])
    assert torch.equal(top.images[0, :5], images[index[0]])


def test_images_enter_once_and_stay_in_their_slot():
    """A batch that beats nothing changes no slot (the set is unordered, not re-sorted)."""
    images, acts = _data(n=20)
    miner = StreamingTopK(4, [2])
    miner.update(acts[:10], images[:10])
    before = miner.result()
    before = before.images.clone(), before.values.clone()
    miner.update(acts[10:] * 0 - 1, images[10:])
    after = miner.result()
    assert torch.equal(after.images, before[0]) and torch.equal(after.values, before[1])


def test_buffered_merges_store_the_same_images_with_fewer_copies(monkeypatch):
    images, acts = _data(n=200, seed=3)
    copied = []
    index_copy = torch.Tensor.index_copy_

    def counting(self, dim, index, source):
        copied.append(len(index))
        return index_copy(self, dim, index, source)

    monkeypatch.setattr(torch.Tensor, "index_copy_", counting)
    results = {}
    for buffer in (1, 4):
        copied.clear()
        miner = StreamingTopK(5, [0, 2, 4], buffer=buffer)
        for i in range(0, 200, 10):
            miner.update(acts[i : i + 10], images[i : i + 10])
        results[buffer] = miner.result().sorted(), sum(copied)
    assert torch.equal(results[1][0].images, results[4][0].images)
    assert torch.equal(results[1][0].values, results[4][0].values)
    assert results[4][1] < 0.7 * results[1][1]
    assert results[4][1] >= 15


def test_pending_images_are_bounded_by_bytes():
    images, acts = _data(n=40)
    per_batch = images[:10].numel() * images.element_size()
    miner = StreamingTopK(5, [0, 2], buffer=100, buffer_bytes=2 * per_batch)
    pending = []
    for i in range(0, 40, 10):
        miner.update(acts[i : i + 10], images[i : i + 10])
        pending.append(len(miner._pending))
    assert pending == [1, 0, 1, 0], "merged whenever two batches' images wait"
    one_shot = StreamingTopK(5, [0, 2])
    one_shot.update(acts, images)
    assert torch.equal(miner.result().sorted().images, one_shot.result().sorted().images)


def _fake_gather(parts: list[TopK]):
    """all_gather over simulated processes: concatenate the same field of every part."""

    def gather(t: torch.Tensor) -> torch.Tensor:
        name = next(
            n for n in ("values", "positions", "keys", "images") if getattr(parts[0], n) is t
        )
        return torch.cat([getattr(p, name) for p in parts])

    return gather


def test_two_process_merge_equals_one_process_and_drops_padding_duplicates():
    images, acts = _data(n=51)
    # DistributedSampler-style: interleave, pad the last shard with the first sample.
    index = list(range(51)) + [0]
    shards = [index[0::2], index[1::2]]
    channels = [0, 3]
    parts = [_stream(images[s], acts[s], 9, channels, [len(s)]) for s in shards]
    merged = parts[0].gathered(_fake_gather(parts)).sorted()
    values, positions, top_index = _global(acts, 9)
    torch.testing.assert_close(merged.values[channels], values[channels])
    assert torch.equal(merged.positions[channels], positions[channels])
    _check_maxima_only(merged, acts, channels)
    for f, c in enumerate(channels):
        assert torch.equal(merged.images[f], images[top_index[c]])


def test_gather_drops_exact_duplicates_on_one_process():
    """Each image twice: the kept 9 hold pairs; after the gather each value is left once."""
    images, acts = _data(n=6)
    streamed = _stream(torch.cat([images, images]), torch.cat([acts, acts]), 9, [1], [12])
    top = streamed.gathered(lambda t: t)
    for row, before in zip(top.values, streamed.values):
        distinct = torch.unique(before).flip(0)
        assert len(distinct) < 9
        torch.testing.assert_close(row[: len(distinct)], distinct)
        assert torch.isinf(row[len(distinct) :]).all()


def test_sorted_keeps_images_with_their_values():
    values = torch.tensor([[1.0, 3.0, 2.0], [5.0, 4.0, 6.0]])
    positions = torch.tensor([[10, 30, 20], [50, 40, 60]])
    images = torch.tensor([[1.0, 3.0, 2.0]]).view(1, 3, 1, 1, 1)
    top = TopK(values, positions, positions * 7, images, torch.tensor([0]), (8, 8)).sorted()
    assert top.values.tolist() == [[3.0, 2.0, 1.0], [6.0, 5.0, 4.0]]
    assert top.positions.tolist() == [[30, 20, 10], [60, 50, 40]]
    assert torch.equal(top.keys, top.positions * 7)
    assert top.images.flatten().tolist() == [3.0, 2.0, 1.0]


def test_stored_channel_out_of_range_is_refused():
    images, acts = _data(n=4)
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        StreamingTopK(3, [6]).update(acts, images)


def test_unit_boxes_follow_the_receptive_field_and_stay_inside():
    field = (7, 2, -1)  # ZFNet conv1: 7x7 / 2, pad 1
    positions = torch.tensor([0, 10 * 30 + 3, 29 * 30 + 29])
    boxes = unit_boxes(positions, 30, field, (64, 64))
    assert boxes.tolist() == [[0, 0, 7, 7], [19, 5, 7, 7], [57, 57, 7, 7]]
    big = unit_boxes(torch.tensor([4]), 3, (139, 16, -59), (64, 64))
    assert big.tolist() == [[0, 0, 64, 64]]
    wide = unit_boxes(torch.tensor([1 * 4 + 3]), 4, (27, 8, -3), (40, 20))
    assert wide.tolist() == [[5, 0, 27, 20]]


def test_crop_takes_the_boxes():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    boxes = torch.tensor([[1, 2, 3, 2], [3, 0, 3, 2]])
    out = crop(images, boxes)
    assert out.shape == (2, 1, 3, 2)
    assert torch.equal(out[0], images[0, :, 1:4, 2:4])
    assert torch.equal(out[1], images[1, :, 3:6, 0:2])


def test_image_keys_identify_images_whatever_the_batch():
    images, _ = _data(n=10)
    keys = image_keys(images)
    assert len(set(keys.tolist())) == 10
    assert torch.equal(image_keys(images.flip(0)), keys.flip(0))
    assert torch.equal(image_keys(torch.cat([images[3:4]] * 3)), keys[3].repeat(3))
    nudged = images[:1].clone()
    nudged[0, 2, 7, 7] = torch.nextafter(nudged[0, 2, 7, 7], torch.tensor(1e9))
    assert image_keys(nudged)[0] != keys[0]
    assert image_keys(images[:1].transpose(2, 3).contiguous())[0] != keys[0]
    assert image_keys(images[:0]).shape == (0,)
    large = torch.randn(6, 3, 64, 64)
    large_keys = image_keys(large)
    assert len(set(large_keys.tolist())) == 6
    assert torch.equal(image_keys(large[[4, 4, 1]]), large_keys[[4, 4, 1]])
    assert torch.equal(image_keys(large.half()), image_keys(large.half().clone()))


def test_zero_ties_are_not_mistaken_for_repeats():
    """Silent channels give 0 at position 0 for many images: all of them stay."""
    images, _ = _data(n=12)
    acts = torch.zeros(12, 2, 3, 3)
    top = _stream(images, acts, 9, [0], [5, 7]).gathered(lambda t: t)
    assert (top.values[0] == 0).all() and top.values[1, 0] == 0
    assert len(set(top.keys[0].tolist())) == 9


@pytest.mark.parametrize(
    "kernel,stride,padding,size,covers",
    [
        (3, 2, 1, 30, True),  # ZFNet pool1 on conv1's 30x30
        (3, 2, 0, 13, True),  # pool5 at 224 px
        (2, 2, 0, 8, True),  # VGG
        (2, 2, 0, 7, False),  # the last row and column are never read
        (2, 3, 0, 9, False),  # stride > kernel leaves gaps
    ],
)
def test_pool_keeps_maximum_exactly_when_windows_cover_the_map(
    kernel, stride, padding, size, covers
):
    pool = torch.nn.MaxPool2d(kernel, stride, padding)
    x = torch.rand(50, 4, size, size, generator=torch.Generator().manual_seed(0))
    out = pool(x)
    assert pool_keeps_maximum(pool, x.shape[2:], out.shape[2:]) == covers
    same = torch.equal(out.amax(dim=(2, 3)), x.amax(dim=(2, 3)))
    assert same or not covers
    if not covers:
        assert not same
