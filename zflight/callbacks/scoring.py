"""A second, larger probe set for scores: localisation scores need many images (8 drawn probes move
a pointing game in steps of 0.125), pictures need few. Shared by the occlusion and heat-map
callbacks."""

from __future__ import annotations

from typing import Any

import torch

from zflight.callbacks.results import Probe

SCORE_SEED_OFFSET = 1_000_003  # the score set is drawn independently of the drawn probes


def validation_dataset(trainer: Any) -> tuple[Any, dict[str, Any]] | None:
    """The trainer's validation data set and its display information (mean, std, class names):
    the data module's ``val_dataset``, else the first validation loader's; ``None`` without one.
    The drawn probes (``VisualizationCallback.probe``) and the score sets both come from here."""
    if trainer is None:
        return None
    dm = getattr(trainer, "datamodule", None)
    dataset = getattr(dm, "val_dataset", None) if dm is not None else None
    if dataset is None:
        loaders = getattr(trainer, "val_dataloaders", None)
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return None
    info = {k: getattr(dm, k) for k in ("mean", "std", "class_names") if hasattr(dm, k)}
    return dataset, info


class ScoreProbes:
    """``num`` validation images drawn once with their own seed and cached: the images scores are
    computed on, separate from the few that are drawn. Without a trainer (post-hoc use on a bare
    model) or with ``num=0`` the drawn probes are scored instead."""

    def __init__(self, num: int, seed: int) -> None:
        if num < 0:
            raise ValueError(f"score_probes must be >= 0, got {num}")
        self.num = num
        self.seed = seed + SCORE_SEED_OFFSET
        self._probe: Probe | None = None

    def get(self, trainer: Any, drawn: Probe) -> Probe:
        """The score set on the drawn probes' device (the drawn set itself as the fallback)."""
        if self.num == 0:
            return drawn
        if self._probe is None:
            found = validation_dataset(trainer)
            if found is None:
                return drawn
            dataset, info = found
            self._probe = Probe.from_dataset(dataset, self.num, self.seed, **info)
        return self._probe.to(drawn.images.device)


def joined(a: Probe, b: Probe) -> Probe:
    """One probe of ``a``'s images followed by ``b``'s (the same normalisation and classes)."""
    masks = None if a.masks is None or b.masks is None else torch.cat([a.masks, b.masks])
    return Probe(
        torch.cat([a.images, b.images]),
        torch.cat([a.labels, b.labels]),
        masks,
        a.mean,
        a.std,
        a.class_names,
        a.indices + b.indices,
    )
