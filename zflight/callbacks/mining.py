"""What the deconvnet callbacks share: the conv trunk, the features drawn, and a running top-k of
chosen layers streamed through the validation loop the trainer already runs.

Forward hooks keep a running top-k per feature map (no extra pass over the data); at the end of
the epoch the per-process results are merged with an all-gather and only the winners are re-run
through the deconvnet.
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
from zflight.analysis.images import contrast, denormalize, marked_tile, resize, to_uint8
from zflight.analysis.topk import (
    StreamingTopK,
    TopK,
    image_keys,
    pool_keeps_maximum,
    project_winners,
)
from zflight.callbacks.base import AnalysisContext, VisualizationCallback
from zflight.callbacks.results import Probe

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


class MiningCallback(VisualizationCallback):
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
        self._seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._batch_indices: list[list[int]] | None = None
        self._batch_idx = -1
        # (keys, labels, validation indices) of the images this process saw
        self.seen_labels: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def stored_channels(self, layer: str, model: nn.Module, probe: Probe | None) -> list[int]:
        """Channels of ``layer`` whose winning images are kept (and drawn)."""
        raise NotImplementedError

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        self._batch_indices = validation_batch_indices(trainer)
        super().on_validation_epoch_start(trainer, pl_module)

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch_idx = batch_idx
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)

    @override
    def reset_stream(self) -> None:
        self._miners, self._keyed_batch, self._keys, self._maps = {}, None, None, {}
        self._seen = []

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
                labels = batch[1] if len(batch) > 1 else None
                if (
                    isinstance(labels, torch.Tensor)
                    and len(labels)
                    and len(images) % len(labels) == 0
                ):
                    crops = len(images) // len(labels)
                    index = self._indices_of_batch(len(labels), labels.device)
                    self._seen.append(
                        (
                            self._keys,
                            labels.repeat_interleave(crops),
                            index.repeat_interleave(crops),
                        )
                    )
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
            index = torch.as_tensor(probe.indices or [-1] * len(keys), device=keys.device)
            self._seen = [(keys, probe.labels, index)]
            for i, module in enumerate(list(trunk)[: max(targets) + 1]):
                x = module(x)
                if i in targets:
                    targets[i].update(x, probe.images, keys)
        miners, seen = self._miners, self._seen
        self.reset_stream()
        self.seen_labels = tuple(torch.cat(column) for column in zip(*seen)) if seen else None
        return {layer: m.result().gathered(ctx.all_gather).sorted() for layer, m in miners.items()}

    def _indices_of_batch(self, count: int, device: torch.device) -> torch.Tensor:
        """The validation-set indices of the current batch's ``count`` images (-1 if unknown)."""
        batches = self._batch_indices
        if batches is not None and 0 <= self._batch_idx < len(batches):
            index = batches[self._batch_idx]
            if len(index) == count:
                return torch.as_tensor(index, device=device)
        return torch.full((count,), -1, device=device, dtype=torch.long)

    def winner_info(self, top: TopK, ctx: AnalysisContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(F, k) class label and (F, k) validation-set index of each stored winner (-1 where
        unknown), from the validation images this process saw, combined over processes (one
        gather). Call on every rank."""
        keys = top.keys[top.channels]
        found_info = torch.full((2, *keys.shape), -1, dtype=torch.long, device=keys.device)
        if self.seen_labels is not None:
            seen_keys = self.seen_labels[0].to(keys.device)
            info = torch.stack([c.to(keys.device).long() for c in self.seen_labels[1:]])
            order = seen_keys.argsort()
            sorted_keys = seen_keys[order]
            at = torch.searchsorted(sorted_keys, keys).clamp_max(len(sorted_keys) - 1)
            found = sorted_keys[at] == keys
            found_info = torch.where(found, info[:, order][:, at], found_info)
        if ctx.world_size > 1:
            found_info = ctx.all_gather(found_info).view(-1, *found_info.shape).amax(0)
        return found_info[0], found_info[1]

    def crops(
        self, model: nn.Module, layer: str, top: TopK, probe: Probe
    ) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
        """Per stored feature, k projection tiles and k image-patch tiles (uint8, enlarged to at
        least ``tile`` pixels). Each projection is contrast-normalised on its own, as in the
        paper's figures. Slots without a positive activation are hatched and labelled: "silent"
        when the feature never fires, "inactive" when fewer than k images excite it."""
        proj, patches = project_winners(Deconvnet(trunk_of(model), self.lrn), layer, top)
        patches = denormalize(patches.flatten(0, 1).float(), probe.mean, probe.std).view_as(patches)
        scale = max(1, math.ceil(self.tile / max(proj.shape[-2:])))
        size = (proj.shape[-2] * scale, proj.shape[-1] * scale)
        values = top.values[top.channels]
        silent, inactive = marked_tile(size, "silent"), marked_tile(size, "inactive")
        proj_tiles, patch_tiles = [], []
        for f, row in enumerate((values > 0).tolist()):
            empty = inactive if row[0] else silent
            proj_tiles.append(
                [resize(contrast(p), size) if ok else empty for p, ok in zip(proj[f], row)]
            )
            patch_tiles.append(
                [
                    resize(to_uint8(p, 0.0, 1.0), size) if ok else empty
                    for p, ok in zip(patches[f], row)
                ]
            )
        return proj_tiles, patch_tiles


def validation_batch_indices(trainer: pl.Trainer) -> list[list[int]] | None:
    """The validation-set indices of each batch this process's validation loader yields, from its
    batch sampler (Lightning's distributed sampler under DDP); None where it has none."""
    loader = getattr(trainer, "val_dataloaders", None)
    sampler = getattr(loader, "batch_sampler", None)
    if sampler is None:
        return None
    try:
        return [list(map(int, batch)) for batch in sampler]
    except TypeError:
        return None
