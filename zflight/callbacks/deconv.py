"""Deconvnet callbacks: the top-9 projections of chosen features over the whole validation set
(Zeiler & Fergus 2013, Fig. 2) and the evolution of chosen features across epochs (Fig. 4).

Both mine while the validation loop runs: forward hooks keep a running top-k per feature map (no
extra pass over the data); at the end of the epoch the per-process results are merged with an
all-gather and only the winners are re-run through the deconvnet.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from typing_extensions import override

from zflight.analysis.deconvnet import LRN_MODES, Deconvnet, resolve_layer
from zflight.analysis.images import (
    caption,
    denormalize,
    grid,
    hstack,
    resize,
    symmetric_to_uint8,
    to_uint8,
)
from zflight.analysis.topk import (
    StreamingTopK,
    TopK,
    image_keys,
    pool_keeps_maximum,
    project_winners,
)
from zflight.callbacks.base import AnalysisContext, VisualizationCallback
from zflight.callbacks.results import Figure, Probe, VizResult

DEFAULT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
SELECTIONS = ("random", "most_active")


def trunk_of(model: nn.Module) -> nn.Sequential:
    """The conv trunk the deconvnet walks: ``model.features``, or the model if it is a Sequential."""
    trunk = getattr(model, "features", model)
    if not isinstance(trunk, nn.Sequential):
        raise TypeError(f"{type(model).__name__} has no nn.Sequential conv trunk called 'features'")
    return trunk


def channel_count(trunk: nn.Sequential, layer: str) -> int:
    """Number of feature maps of ``layer``: the out_channels of the last conv at or before it."""
    modules = list(trunk)[: resolve_layer(trunk, layer) + 1]
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels if convs else 3


def seeded_channels(layer: str, n_channels: int, count: int, seed: int) -> list[int]:
    """A sorted random subset of ``count`` channels, fixed by ``seed`` and the layer's name."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(layer.encode()))
    return sorted(torch.randperm(n_channels, generator=g)[:count].tolist())


class _MiningCallback(VisualizationCallback):
    """Streams a running top-k of chosen layers through the validation loop and merges it."""

    def __init__(
        self, layers: Sequence[str], k: int, lrn: str, seed: int, tile: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if lrn not in LRN_MODES:
            raise ValueError(f"lrn must be one of {', '.join(LRN_MODES)}; got {lrn!r}")
        if not layers:
            raise ValueError("layers must name at least one layer")
        self.layers = list(layers)
        self.k = k
        self.lrn = lrn
        self.seed = seed
        self.tile = tile
        self._miners: dict[str, StreamingTopK] = {}
        self._trainer: pl.Trainer | None = None
        self._keyed_batch: Any = None
        self._keys: torch.Tensor | None = None
        self._maps: dict[str, torch.Tensor] = {}

    def stored_channels(self, layer: str, model: nn.Module, probe: Probe | None) -> list[int]:
        """Channels of ``layer`` whose winning images are kept (and drawn)."""
        raise NotImplementedError

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        super().on_validation_epoch_start(trainer, pl_module)

    @override
    def reset_stream(self) -> None:
        self._miners, self._keyed_batch, self._keys, self._maps = {}, None, None, {}

    @override
    def stream_hooks(self, model: nn.Module) -> list[tuple[nn.Module, Callable]]:
        trunk = trunk_of(model)
        self._miners = self._new_miners(model, None)
        hooks = []
        for layer, miner in self._miners.items():
            idx = resolve_layer(trunk, layer)
            after = trunk[idx + 1] if idx + 1 < len(trunk) else None
            if isinstance(after, nn.MaxPool2d):  # take the channel maxima off the smaller map
                hooks += [(trunk[idx], self._keep_map(layer)), (after, self._update(layer, miner))]
            else:
                hooks.append((trunk[idx], self._update(layer, miner, own_output=True)))
        return hooks

    def _keep_map(self, layer: str) -> Callable:
        def keep(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self._maps[layer] = output

        return keep

    def _update(self, layer: str, miner: StreamingTopK, own_output: bool = False) -> Callable:
        def update(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            batch = self.current_batch
            acts = output if own_output else self._maps.pop(layer, None)
            if batch is None or acts is None:
                return
            images = batch[0].flatten(0, 1) if batch[0].dim() == 5 else batch[0]  # ten-crop
            if len(images) != len(acts):
                raise RuntimeError(
                    f"{self.name}: a forward of {len(acts)} images during a "
                    f"validation batch of {len(images)}; cannot pair them"
                )
            if self._keyed_batch is not batch:  # one key computation per batch, shared by layers
                self._keyed_batch, self._keys = batch, image_keys(images)
            maxima = None
            if not own_output and pool_keeps_maximum(module, acts.shape[2:], output.shape[2:]):
                maxima = output.amax(dim=(2, 3))
            miner.update(acts, images, self._keys, maxima)

        return update

    def _new_miners(self, model: nn.Module, probe: Probe | None) -> dict[str, StreamingTopK]:
        return {
            layer: StreamingTopK(self.k, self.stored_channels(layer, model, probe))
            for layer in self.layers
        }

    def mined(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> dict[str, TopK]:
        """Per layer, the top-k merged over all processes, strongest first. Without a recorded
        validation stream (post-hoc use) the probe set is mined instead. Call on every rank."""
        if not self._miners or any(m.empty for m in self._miners.values()):
            self._miners = self._new_miners(model, probe)
            trunk = trunk_of(model)
            targets = {resolve_layer(trunk, layer): m for layer, m in self._miners.items()}
            x, keys = probe.images, image_keys(probe.images)
            for i, module in enumerate(list(trunk)[: max(targets) + 1]):
                x = module(x)
                if i in targets:
                    targets[i].update(x, probe.images, keys)
        miners = self._miners
        self.reset_stream()
        return {layer: m.result().gathered(ctx.all_gather).sorted() for layer, m in miners.items()}

    def crops(
        self, model: nn.Module, layer: str, top: TopK, probe: Probe
    ) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
        """Per stored feature, k projection tiles and k image-patch tiles (uint8, upscaled); slots
        without a positive activation (silent features, too few images) are plain gray."""
        proj, patches = project_winners(Deconvnet(trunk_of(model), self.lrn), layer, top)
        patches = denormalize(patches.flatten(0, 1).float(), probe.mean, probe.std).view_as(patches)
        scale = max(1, math.ceil(self.tile / max(proj.shape[-2:])))
        size = (proj.shape[-2] * scale, proj.shape[-1] * scale)
        filled = (top.values[top.channels] > 0).tolist()
        blank = np.full((*size, 3), 128, np.uint8)
        proj_tiles, patch_tiles = [], []
        for f, row in enumerate(filled):
            proj_tiles.append(
                [
                    resize(symmetric_to_uint8(p), size) if ok else blank
                    for p, ok in zip(proj[f], row)
                ]
            )
            patch_tiles.append(
                [
                    resize(to_uint8(p, 0.0, 1.0), size) if ok else blank
                    for p, ok in zip(patches[f], row)
                ]
            )
        return proj_tiles, patch_tiles


class DeconvTopK(_MiningCallback):
    """Paper Fig. 2: for chosen features of each layer, the k validation images with the strongest
    single activation, as deconvnet projections beside the matching image patches.

    Mining streams through the validation loop the trainer already runs (a channel-wise max and a
    top-k merge per batch); images are stored only for the features drawn. Each figure
    ``deconv/<layer>`` shows, for every feature, a 3x3 block of projections (each on its own
    scale, zero = gray) beside a 3x3 block of patches cropped to the layer's receptive field.
    Scalar ``deconv/<layer>/silent_fraction``: share of the layer's features never positive on
    the validation set.

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
        features_per_layer: int = 16,
        selection: str = "random",
        k: int = 9,
        lrn: str = "identity",
        seed: int = 0,
        tile: int = 32,
        ncols: int = 4,
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
        if ctx.rank != 0:
            return None
        result = VizResult()
        for layer, top in tops.items():
            proj, patches = self.crops(model, layer, top, probe)
            cells = []
            for channel, p, q, best in zip(
                top.channels.tolist(), proj, patches, top.values[top.channels, 0].tolist()
            ):
                side = math.ceil(math.sqrt(len(p)))
                label = f"feature {channel}" + ("" if best > 0 else " (silent)")
                cells.append(
                    caption(hstack([grid(p, side, pad=1), grid(q, side, pad=1)], pad=3), label)
                )
            text = (
                f"{layer}: top {self.k} of each feature over the validation set "
                f"(projection | image patch), epoch {ctx.epoch}"
            )
            result.figures[layer] = Figure(grid(cells, self.ncols, pad=8), text)
            result.scalars[f"{layer}/silent_fraction"] = float(
                (top.values[:, 0] <= 0).float().mean()
            )
        return result

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ranking": dict(self._ranking)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._ranking = dict(state_dict.get("ranking", {}))


class FeatureEvolution(_MiningCallback):
    """Paper Fig. 4: for chosen features, the projection of the strongest activation over the
    validation set at every logged epoch, appended to a strip (rows = features, columns =
    epochs). The strips live in ``state_dict`` so they survive a resume.

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
        features_per_layer: int = 4,
        channels: dict[str, list[int]] | None = None,
        lrn: str = "identity",
        seed: int = 0,
        tile: int = 32,
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
        result = VizResult()
        for layer, top in self.mined(model, probe, ctx).items():
            proj, _ = self.crops(model, layer, top, probe)
            column = torch.from_numpy(np.stack([tiles[0] for tiles in proj]))
            strip = self.strips.setdefault(layer, {})
            if strip and next(iter(strip.values())).shape != column.shape:
                size = tuple(next(iter(strip.values())).shape[1:3])
                column = torch.from_numpy(np.stack([resize(t.numpy(), size) for t in column]))
            strip[ctx.epoch] = column
            text = f"{layer}: features {self.channels[layer]} (rows) by epoch (columns)"
            result.figures[layer] = Figure(self._strip(layer), text)
        return result

    def _strip(self, layer: str) -> np.ndarray:
        """Rows = features (labelled), columns = logged epochs (labelled), oldest first."""
        strip = self.strips[layer]
        _, h, w, _ = next(iter(strip.values())).shape
        labels = [
            caption(np.full((max(1, h - 12), w, 3), 255, np.uint8), f"#{c}")
            for c in self.channels[layer]
        ]
        columns = [caption(grid(labels, 1, pad=2), "")]
        for epoch in sorted(strip):
            columns.append(caption(grid(list(strip[epoch].numpy()), 1, pad=2), f"ep {epoch}"))
        return hstack(columns, pad=2)

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
