"""An ImageFolder is indexed once per folder state, by the first rank, and read back by the rest."""

from __future__ import annotations

import threading
import time

import pytest

import zflight.data.index_cache as cache_mod
from zflight.data.index_cache import cached_index, folder_key

JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 12


def make_folder(root, classes=("a", "b"), per_class=3):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            (root / c / f"{i}.JPEG").write_bytes(JPEG)
    (root / "a" / "junk.JPEG").write_bytes(b"not an image")
    return list(classes)


def test_second_start_reads_the_cache_and_a_change_reindexes(tmp_path, monkeypatch):
    split, store = tmp_path / "train", tmp_path / "cache"
    classes = make_folder(split)
    built = cached_index(split, classes, store, first=True)
    assert len(built.samples) == 6 and len(built.bad) == 1
    assert len(list(store.glob("imagefolder-*.pkl"))) == 1

    def fail(*args):
        raise AssertionError("indexed again")

    monkeypatch.setattr(cache_mod, "index_images", fail)
    again = cached_index(split, classes, store, first=True)
    assert again.samples == built.samples and again.bad == built.bad
    monkeypatch.undo()
    key = folder_key(split, classes)
    time.sleep(0.01)
    (split / "b" / "new.JPEG").write_bytes(JPEG)
    assert folder_key(split, classes) != key, "adding a file changes the key"
    changed = cached_index(split, classes, store, first=True)
    assert len(changed.samples) == 7
    assert len(list(store.glob("imagefolder-*.pkl"))) == 2


def test_other_ranks_wait_for_the_first_ranks_index(tmp_path, monkeypatch):
    split, store = tmp_path / "val", tmp_path / "cache"
    classes = make_folder(split)
    calls = []
    real = cache_mod.index_images
    monkeypatch.setattr(cache_mod, "index_images", lambda *a: calls.append(1) or real(*a))
    got = {}
    reader = threading.Thread(
        target=lambda: got.setdefault("r", cached_index(split, classes, store, first=False))
    )
    reader.start()
    time.sleep(0.3)
    assert reader.is_alive(), "rank 1 waits while nothing is written"
    first = cached_index(split, classes, store, first=True)
    reader.join(10)
    assert got["r"].samples == first.samples and len(calls) == 1, "indexed once, by rank 0"


def test_a_rank_that_waits_too_long_indexes_itself_and_no_cache_means_none(tmp_path):
    split = tmp_path / "val"
    classes = make_folder(split)
    alone = cached_index(split, classes, tmp_path / "cache", first=False, wait=0.2)
    assert len(alone.samples) == 6 and not (tmp_path / "cache").exists(), "only rank 0 writes"
    assert len(cached_index(split, classes, None).samples) == 6


@pytest.mark.parametrize("rank, first", [("0", True), ("1", False), ("", True)])
def test_first_local_rank(monkeypatch, rank, first):
    monkeypatch.setenv("LOCAL_RANK", rank)
    assert cache_mod.is_first_local_rank() is first
