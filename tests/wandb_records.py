"""Read an offline W&B run file (``run-<id>.wandb``) back: its history rows, for tests.

wandb has no public reader. The file is a LevelDB-style log (wandb 0.31.0, pinned): a 7-byte
header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header
(CRC-32C, length, type: 1 full, 2 first, 3 middle, 4 last) holding a protobuf ``Record``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> Iterator[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"not a W&B run file: {data[:7]!r}"
    pos, chunks = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0:
            continue
        chunks.append(payload)
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def history(path: Path) -> list[dict[Any, Any]]:
    """One dict per ``log`` call: plain keys as str, nested ones (image fields) as tuples."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = tuple(item.nested_key) or (item.key,)
                row[key[0] if len(key) == 1 else key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def artifacts(path: Path) -> list[pb.ArtifactRecord]:
    """The artifacts the run logged (a ``wandb.Table`` goes into one of type ``run_table``)."""
    return [r.artifact for r in records(path) if r.WhichOneof("record_type") == "artifact"]


def config_keys(path: Path) -> set[str]:
    """The top-level keys of every config update the run logged."""
    return {
        u.key or u.nested_key[0]
        for r in records(path)
        if r.WhichOneof("record_type") == "config"
        for u in r.config.update
    }
