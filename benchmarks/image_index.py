"""Indexing an ImageNet-layout folder at start-up: every header read (cold) against the cached index.

Writes ``--files`` tiny files (a 16-byte JPEG header each; indexing reads only the header) in
``--classes`` class folders, then times, side by side in one run:

- ``index``: ``files.index_images`` reads every file's header, as every rank did at every start;
- ``cold``: ``index_cache.cached_index`` with an empty cache: the same, plus writing the cache;
- ``cached``: the same call again: the folder's key (one stat per class folder) and the pickle.

The files were just written, so the page cache is warm: ``index`` is the best case of a first
start (a cold disk or a network file system is slower). ``cached`` does not read the files.

    python benchmarks/image_index.py                 # 100k files in 1000 classes
    python benchmarks/image_index.py --files 10000
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from zflight.data.files import index_images
from zflight.data.index_cache import cached_index

HEADER = b"\xff\xd8\xff\xe0" + b"\0" * 12


def make_folder(root: Path, files: int, classes: int) -> list[str]:
    names = [f"n{c:08d}" for c in range(classes)]
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(c, files, classes):
            (root / name / f"{i:08d}.JPEG").write_bytes(HEADER)
    return names


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument(
        "--dir", default=None, help="where to write the folder (default: a temp dir)"
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{args.files} files in {args.classes} classes"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        split, store = Path(tmp) / "train", Path(tmp) / "cache"
        start = time.perf_counter()
        classes = make_folder(split, args.files, args.classes)
        print(f"wrote the folder in {time.perf_counter() - start:.1f} s")
        t_index, index = timed(lambda: index_images(split, classes))
        t_cold, _ = timed(lambda: cached_index(split, classes, store, first=True))
        t_cached, cached = timed(lambda: cached_index(split, classes, store, first=True), 3)
        assert cached.samples == index.samples
        size = sum(p.stat().st_size for p in store.iterdir())
        print(f"{'':<8}{'seconds':>9}{'us a file':>11}{'x cached':>10}")
        for name, t in (("index", t_index), ("cold", t_cold), ("cached", t_cached)):
            print(f"{name:<8}{t:>9.2f}{1e6 * t / args.files:>11.1f}{t / t_cached:>10.1f}")
        print(f"cache file: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
