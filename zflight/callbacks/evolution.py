"""FeatureEvolution: the evolution of chosen features across epochs (Zeiler & Fergus 2013, Fig. 4),
mined while the validation loop runs, as ``DeconvTopK`` is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from typing_extensions import override

from zflight.analysis.images import grid, resize, text_tile, title_bar, vstack
from zflight.callbacks.base import AnalysisContext
from zflight.callbacks.mining import (
    DEFAULT_LAYERS,
    MiningCallback,
    channel_count,
    seeded_channels,
    trunk_of,
)
from zflight.callbacks.results import Figure, Probe, VizResult


class FeatureEvolution(MiningCallback):
    """Paper Fig. 4: for chosen features, the projection of the strongest activation over the
    validation set at every logged epoch, appended to a strip (rows = features, columns =
    epochs). Each projection is contrast-normalised on its own; a feature that never fires at an
    epoch shows a hatched "silent" tile. The strips live in ``state_dict`` so they survive a
    resume.

    Args:
        layers: trunk layers to follow.
        features_per_layer: features followed per layer (a subset fixed by ``seed``).
        channels: explicit features per layer, ``{"conv5": [3, 17]}``, instead of a random subset.
        lrn: LocalResponseNorm in the deconvnet: ``"identity"`` or ``"gradient"``.
        seed: seed of the random feature subset.
        tile: crops are enlarged (nearest neighbour, whole factors) to at least this many pixels.
        **kwargs: schedule and probe options of ``VisualizationCallback``.

    Example:
        >>> FeatureEvolution(layers=["conv5"], channels={"conv5": [0, 7, 12]}, every_n_epochs=2)
    """

    name = "evolution"

    def __init__(
        self,
        layers: Sequence[str] = DEFAULT_LAYERS,
        features_per_layer: int = 16,
        channels: dict[str, list[int]] | None = None,
        lrn: str = "identity",
        seed: int = 0,
        tile: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(layers, 1, lrn, seed, tile, **kwargs)
        self.features_per_layer = features_per_layer
        self.channels = {
            layer: sorted(int(c) for c in cs) for layer, cs in (channels or {}).items()
        }
        self.strips: dict[str, dict[int, torch.Tensor]] = {}

    @override
    def stored_channels(self, layer: str, model: nn.Module, probe: Probe | None) -> list[int]:
        if layer not in self.channels:
            n = channel_count(trunk_of(model), layer)
            self.channels[layer] = seeded_channels(
                layer, n, min(self.features_per_layer, n), self.seed
            )
        return self.channels[layer]

    @override
    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult | None:
        # every rank projects its share of the winners; rank 0 draws and keeps the strips
        tops = self.mined(model, probe, ctx)
        tiles = {layer: self.crops(model, layer, top, probe, ctx)[0] for layer, top in tops.items()}
        if ctx.rank != 0:
            return None
        result = VizResult()
        for layer, top in tops.items():
            proj = tiles[layer]
            column = torch.from_numpy(np.stack([tiles[0] for tiles in proj]))
            strip = self.strips.setdefault(layer, {})
            if strip and next(iter(strip.values())).shape != column.shape:
                size = tuple(next(iter(strip.values())).shape[1:3])
                column = torch.from_numpy(np.stack([resize(t.numpy(), size) for t in column]))
            strip[ctx.epoch] = column
            silent = int((top.values[top.channels, 0] <= 0).sum())
            text = (
                f"{layer}: the deconvnet projection of the strongest activation over the "
                f"validation set of features {self.channels[layer]} (rows) at each analysed "
                f"epoch (columns), up to epoch {ctx.epoch}"
                + (f"; {silent} silent now" if silent else "")
                + "."
            )
            result.figures[layer] = Figure(self._strip(layer), text)
        return result

    def _strip(self, layer: str) -> np.ndarray:
        """Rows = features (labelled), columns = logged epochs (labelled), oldest first."""
        strip = self.strips[layer]
        _, h, w, _ = next(iter(strip.values())).shape
        epochs = sorted(strip)
        header = [text_tile("feature", (16, w))] + [
            text_tile(f"epoch {e}", (16, w)) for e in epochs
        ]
        tiles = []
        for row, c in enumerate(self.channels[layer]):
            tiles.append(text_tile(f"#{c}", (h, w)))
            tiles += [strip[e][row].numpy() for e in epochs]
        ncols = len(epochs) + 1
        body = vstack([grid(header, ncols, pad=2), grid(tiles, ncols, pad=2)], pad=0)
        title = f"Feature evolution, {layer}: {len(self.channels[layer])} features by epoch"
        note = (
            "Each tile: the deconvnet projection of the feature's strongest activation over the "
            "validation set at that epoch, contrast-normalised on its own; hatched 'silent': the "
            "feature did not fire."
        )
        return title_bar(body, title, note)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "channels": {k: list(v) for k, v in self.channels.items()},
            "strips": {layer: dict(s) for layer, s in self.strips.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.channels.update({k: list(v) for k, v in state_dict.get("channels", {}).items()})
        self.strips = {
            layer: {int(e): t for e, t in s.items()}
            for layer, s in state_dict.get("strips", {}).items()
        }
