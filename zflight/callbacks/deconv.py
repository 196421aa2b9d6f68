"""DeconvTopK: the top-9 projections of chosen features over the whole validation set (Zeiler &
Fergus 2013, Fig. 2). ``FeatureEvolution`` (Fig. 4) lives in ``zflight.callbacks.evolution`` and is
importable from here too, for configs saved before it moved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from typing_extensions import override

from zflight.analysis.deconvnet import resolve_layer
from zflight.analysis.images import caption, fmt, grid, hstack, marked_tile, title_bar
from zflight.analysis.topk import TopK
from zflight.callbacks.base import AnalysisContext
from zflight.callbacks.evolution import FeatureEvolution
from zflight.callbacks.mining import (
    DEFAULT_LAYERS,
    SELECTIONS,
    MiningCallback,
    channel_count,
    seeded_channels,
    trunk_of,
)
from zflight.callbacks.results import Figure, Probe, Table, VizResult

__all__ = ["DeconvTopK", "FeatureEvolution", "channel_count", "seeded_channels", "trunk_of"]


class DeconvTopK(MiningCallback):
    """Paper Fig. 2: for chosen features of each layer, the k validation images with the strongest
    single activation, as deconvnet projections beside the matching image patches.

    Mining streams through the validation loop the trainer already runs (a channel-wise max and a
    top-k merge per batch); images are stored only for the features drawn. Each figure
    ``deconv/<layer>`` shows, for every feature, a 3x3 block of projections (each
    contrast-normalised on its own, as in the paper) beside a 3x3 block of patches cropped to the
    layer's receptive field; a slot without a positive activation is hatched and labelled
    "silent" (the feature never fires) or "inactive" (fewer than k images excite it).
    Scalar ``deconv/<layer>/silent_fraction``: share of the layer's features never positive on
    the validation set. Table ``deconv/<layer>/top<k>`` (a W&B Table, to sort and filter): one
    row per positive winner: feature, rank, activation, image (its validation index), the
    image's class, patch and projection.

    Args:
        layers: trunk layers to mine (``convK`` = the rectified map of conv K).
        features_per_layer: features drawn per layer.
        selection: ``"random"``, a subset fixed by ``seed``; or ``"most_active"``, the features
            with the strongest activation at the previous mined epoch (the probe set's before
            the first one).
        k: images per feature (the paper's 9).
        lrn: LocalResponseNorm in the deconvnet: ``"identity"`` or ``"gradient"``.
        seed: seed of the random feature subset.
        tile: crops are enlarged (nearest neighbour, whole factors) to at least this many pixels.
        ncols: features per row of the figure.
        **kwargs: schedule and probe options of ``VisualizationCallback``.

    Example:
        >>> DeconvTopK(layers=["conv2", "conv5"], features_per_layer=9, every_n_epochs=5)
    """

    name = "deconv"

    def __init__(
        self,
        layers: Sequence[str] = DEFAULT_LAYERS,
        features_per_layer: int = 9,
        selection: str = "random",
        k: int = 9,
        lrn: str = "identity",
        seed: int = 0,
        tile: int = 64,
        ncols: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(layers, k, lrn, seed, tile, **kwargs)
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}; got {selection!r}")
        if features_per_layer < 1:
            raise ValueError(f"features_per_layer must be >= 1, got {features_per_layer}")
        self.features_per_layer = features_per_layer
        self.selection = selection
        self.ncols = ncols
        self._ranking: dict[str, torch.Tensor] = {}

    @override
    def stored_channels(self, layer: str, model: nn.Module, probe: Probe | None) -> list[int]:
        trunk = trunk_of(model)
        n = channel_count(trunk, layer)
        count = min(self.features_per_layer, n)
        if self.selection == "random":
            return seeded_channels(layer, n, count, self.seed)
        if layer not in self._ranking:
            self._rank_on_probe(trunk, probe)
        return sorted(self._ranking[layer].topk(count).indices.tolist())

    def _rank_on_probe(self, trunk: nn.Sequential, probe: Probe | None) -> None:
        if probe is None:
            if self._trainer is None:
                raise RuntimeError("most_active selection needs a trainer or a probe to rank on")
            probe = self.probe(self._trainer, next(trunk.parameters()).device)
        targets = {resolve_layer(trunk, layer): layer for layer in self.layers}
        x = probe.images
        for i, module in enumerate(list(trunk)[: max(targets) + 1]):
            x = module(x)
            if i in targets:
                self._ranking.setdefault(
                    targets[i], x.detach().flatten(2).amax(dim=(0, 2)).float().cpu()
                )

    @override
    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult | None:
        tops = self.mined(model, probe, ctx)
        self._ranking = {layer: top.values[:, 0].cpu() for layer, top in tops.items()}
        found = {layer: self.winner_info(top, ctx) for layer, top in tops.items()}
        if ctx.rank != 0:
            return None
        result = VizResult()
        first = first_conv_name(trunk_of(model))
        for layer, top in tops.items():
            proj, patches = self.crops(model, layer, top, probe)
            result.figures[layer] = self._figure(
                layer, top, proj, patches, ctx.epoch, layer == first
            )
            result.tables[f"{layer}/top{self.k}"] = self._table(
                top, *found[layer], proj, patches, probe.class_names
            )
            result.scalars[f"{layer}/silent_fraction"] = float(
                (top.values[:, 0] <= 0).float().mean()
            )
        return result

    def _table(
        self,
        top: TopK,
        labels: torch.Tensor,
        indices: torch.Tensor,
        proj: list[list[np.ndarray]],
        patches: list[list[np.ndarray]],
        names: list[str],
    ) -> Table:
        """One row per positive winner of each drawn feature, to sort and filter in W&B: the
        feature, its rank, the activation, the image (its index in the validation set; -1 where
        the loader does not say), the image's class, the patch and the projection."""
        rows = []
        values = top.values[top.channels].tolist()
        for f, channel in enumerate(top.channels.tolist()):
            for r, value in enumerate(values[f]):
                if value <= 0:
                    break
                y = int(labels[f, r])
                name = names[y] if 0 <= y < len(names) else (str(y) if y >= 0 else "?")
                index = int(indices[f, r])
                rows.append([channel, r + 1, value, index, name, patches[f][r], proj[f][r]])
        columns = ["feature", "rank", "activation", "image", "class", "patch", "projection"]
        return Table(columns, rows)

    def _figure(
        self,
        layer: str,
        top: TopK,
        proj: list[list[np.ndarray]],
        patches: list[list[np.ndarray]],
        epoch: int,
        first_layer: bool = False,
    ) -> Figure:
        """One cell per feature (projections | patches), a title bar and a caption. The first
        layer's caption says why its projections repeat: one activation of the first conv layer
        projects to its filter, whatever the image."""
        best = top.values[top.channels, 0].tolist()
        cells = []
        for channel, p, q, value in zip(top.channels.tolist(), proj, patches, best):
            side = math.ceil(math.sqrt(len(p)))
            block = hstack([grid(p, side, pad=1), grid(q, side, pad=1)], pad=3)
            if value > 0:
                cells.append(caption(block, f"feature {channel}: max {fmt(value)}"))
            else:  # one hatched block instead of 2k identical tiles
                text = "silent: never active on the validation set"
                cells.append(caption(marked_tile(block.shape[:2], text), f"feature {channel}"))
        silent = sum(v <= 0 for v in best)
        title = (
            f"Deconvnet, {layer}, epoch {epoch}: "
            f"the {self.k} strongest images of {len(best)} features"
        )
        note = (
            f"Per feature: left, the deconvnet projections of its {self.k} strongest activations "
            "over the validation set, each contrast-normalised on its own; right, the image "
            "patches under their receptive field. Hatched 'silent': the feature never fires; "
            f"'inactive': fewer than {self.k} images excite it."
        )
        if first_layer:
            note += (
                f" {layer} is the first layer: the projection of one of its activations is its "
                "filter itself, so a feature's projections are the same picture; the patches say "
                "what excites it."
            )
        text = (
            f"{layer}: top {self.k} activations of {len(best)} features over the validation set, "
            f"deconvnet projection beside image patch, epoch {epoch}"
            + (f"; {silent} silent" if silent else "")
            + "."
            + (
                f" In the first layer a projection is the feature's filter itself (the same "
                f"picture for all {self.k}); the patches differ."
                if first_layer
                else ""
            )
        )
        body = grid(cells, self.ncols, pad=10)
        return Figure(title_bar(body, title, note), text)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ranking": dict(self._ranking)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._ranking = dict(state_dict.get("ranking", {}))


def first_conv_name(trunk: nn.Module) -> str | None:
    """The name of the first ``Conv2d`` in the trunk (``conv1`` in ZFNet), or None."""
    for name, module in trunk.named_children():
        if isinstance(module, nn.Conv2d):
            return name
    return None
