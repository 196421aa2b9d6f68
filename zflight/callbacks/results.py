"""What a visual callback hands on: ``Probe`` (its input); ``Figure``, ``Table`` and ``VizResult``
(its output).

These types sit below both the callback base and the sinks, so imports flow one way:
``base`` → ``sinks`` → ``results``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from zflight.analysis.images import denormalize, to_uint8


@dataclass
class Figure:
    """One picture (uint8 HxWx3) with an optional caption."""

    image: np.ndarray
    caption: str = ""


@dataclass
class Table:
    """Rows to sort and filter (a W&B Table): ``columns`` names, one ``rows`` entry per row.

    A cell is a str, int or float, or a picture (uint8 HxWx3 array or ``Figure``), which W&B shows
    as an image. Every row has one cell per column.
    """

    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"table row {i} has {len(row)} cells for {len(self.columns)} columns"
                )


@dataclass
class VizResult:
    """What an analysis hands to the sinks: named pictures, named scalars and named tables.

    Keys are relative to the callback's name (``deconv`` + ``conv5/top9`` logs ``deconv/conv5/top9``).
    """

    figures: dict[str, np.ndarray | Figure | list[Figure]] = field(default_factory=dict)
    scalars: dict[str, float] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)


@dataclass
class Probe:
    """A fixed, seeded subset of the validation set: the same images every epoch and on every rank."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    class_names: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)

    def display(self) -> list[np.ndarray]:
        """The probe images as uint8 HxWx3 arrays, normalisation undone."""
        return [
            to_uint8(x, 0.0, 1.0) for x in denormalize(self.images.float(), self.mean, self.std)
        ]

    def to(self, device: torch.device | str) -> Probe:
        masks = None if self.masks is None else self.masks.to(device)
        return Probe(
            self.images.to(device),
            self.labels.to(device),
            masks,
            self.mean,
            self.std,
            self.class_names,
            self.indices,
        )

    @classmethod
    def from_dataset(cls, dataset: Any, num: int, seed: int, **info: Any) -> Probe:
        """Take ``num`` samples chosen by a seeded permutation (independent of ranks and samplers)."""
        n = len(dataset)
        if n == 0:
            raise ValueError("the validation data set is empty: no probe images to analyse")
        g = torch.Generator().manual_seed(seed)
        idx = sorted(torch.randperm(n, generator=g)[: min(num, n)].tolist())
        items = [dataset[i] for i in idx]
        images = torch.stack([it[0] for it in items])
        labels = torch.as_tensor([int(it[1]) for it in items])
        masks = (
            torch.stack([torch.as_tensor(it[2]).bool() for it in items])
            if len(items[0]) > 2
            else None
        )
        return cls(images, labels, masks, indices=idx, **info)
