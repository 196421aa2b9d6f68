"""Occlusion: what the network needs to see, mapped by sliding a gray square over each probe image
(Zeiler & Fergus 2013, Fig. 7), every N epochs."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from typing_extensions import override

from zflight.analysis.deconvnet import Deconvnet
from zflight.analysis.images import caption, colormap, hstack, overlay, resize, symmetric_to_uint8
from zflight.analysis.localization import mass_in_mask, pointing_game
from zflight.analysis.occlusion import FILLS, METHODS, OcclusionMaps, occlusion_maps, window_starts
from zflight.callbacks.base import AnalysisContext, VisualizationCallback
from zflight.callbacks.results import Figure, Probe, VizResult


class Occlusion(VisualizationCallback):
    """Occlusion sensitivity of the probe images, one panel per image.

    Figure ``panels``, per probe image: the image; the probability of the true class with the
    square at each position, as a heat map over the image; the most probable class at each
    position, colour-coded with a legend; the total activation of the layer-5 feature map that is
    strongest on the unoccluded image; and that map's deconvnet projection. Per-position values
    are placed on the image as the mean over the windows covering each pixel (labels: the nearest
    covering window), see ``zflight.analysis.occlusion``.

    With object masks, scalars score the drop in true-class probability (unoccluded minus
    occluded, on the image): ``pointing_game`` is the share of images whose largest drop lies in
    the mask, ``drop_mass_in_mask`` the share of the positive drop that falls inside it, averaged
    over images.

    Positions are split across ranks and gathered; only rank 0 draws.

    Args:
        size, stride: occluder side and step in pixels. The defaults (16, 8) give 7x7 positions on
            64 px shapes images: cheap enough to run every epoch on CPU.
        fill: ``"mean"`` (data set mean, gray), ``"zero"`` (black), ``"blur"`` or a constant.
        feature_layer: layer whose strongest map is tracked and projected.
        deconv: draw the deconvnet projection of that map.
        method: ``"auto"``, ``"incremental"`` or ``"full"`` (see ``occlusion_maps``).
        max_batch_bytes: activation memory one chunk of occluded positions may take.
        tile: pictures are enlarged (nearest neighbour) to at least this many pixels a side.
        **kwargs: schedule and probe options of ``VisualizationCallback``.

    Raises:
        ValueError: for an unknown ``fill`` or ``method``, or a stride outside [1, size].

    Example:
        >>> Occlusion(size=24, stride=8, fill="blur", every_n_epochs=5)
    """

    name = "occlusion"

    def __init__(
        self,
        size: int = 16,
        stride: int = 8,
        fill: str | float = "mean",
        feature_layer: str = "conv5",
        deconv: bool = True,
        method: str = "auto",
        max_batch_bytes: int = 256 << 20,
        tile: int = 128,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(fill, str) and fill not in FILLS:
            raise ValueError(
                f"occlusion fill must be a number or one of {', '.join(FILLS)}; got {fill!r}"
            )
        if method not in METHODS:
            raise ValueError(
                f"occlusion method must be one of {', '.join(METHODS)}; got {method!r}"
            )
        window_starts(size, size, stride)  # checks 1 <= stride <= size
        self.size = size
        self.stride = stride
        self.fill = fill
        self.feature_layer = feature_layer
        self.deconv = deconv
        self.method = method
        self.max_batch_bytes = max_batch_bytes
        self.tile = tile

    @override
    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult | None:
        has_trunk = isinstance(getattr(model, "features", None), nn.Sequential)
        maps = occlusion_maps(
            model,
            probe.images,
            probe.labels,
            size=self.size,
            stride=self.stride,
            fill=self.fill,
            mean=probe.mean,
            std=probe.std,
            feature_layer=self.feature_layer if has_trunk else None,
            method=self.method,
            max_batch_bytes=self.max_batch_bytes,
            rank=ctx.rank,
            world_size=ctx.world_size,
            all_gather=ctx.all_gather,
            autocast=ctx.autocast,
        )
        if ctx.rank != 0:
            return None
        drops = maps.upsample(maps.drop())
        scalars: dict[str, float] = {}
        if probe.masks is not None:
            masks = probe.masks.bool().to(drops.device)
            scalars["pointing_game"] = pointing_game(drops, masks).float().mean().item()
            scalars["drop_mass_in_mask"] = mass_in_mask(drops, masks).mean().item()
        projections = None
        if self.deconv and maps.channel is not None:
            projections = Deconvnet(model.features).project(
                probe.images, self.feature_layer, maps.channel
            )
        return VizResult(figures={"panels": self.panels(probe, maps, projections)}, scalars=scalars)

    def panels(
        self, probe: Probe, maps: OcclusionMaps, projections: torch.Tensor | None
    ) -> list[Figure]:
        """One captioned picture per probe image: image | p(true) | label map | feature | deconv."""
        names = probe.class_names
        prob, labels = maps.upsample(maps.prob), maps.label_image()
        feature = maps.upsample(maps.feature) if maps.feature is not None else None
        scale = max(1, -(-self.tile // min(maps.image_size)))
        figures = []
        for i, img in enumerate(probe.display()):
            img = resize(img, (img.shape[0] * scale, img.shape[1] * scale))
            t = int(probe.labels[i])
            p = prob[i]
            tiles = [
                caption(img, f"{_name(names, t)}  p={maps.base_prob[i]:.2f}"),
                caption(
                    overlay(img, p, 0.6, "jet"), f"p({_name(names, t)}) {p.min():.2f}-{p.max():.2f}"
                ),
                label_tile(labels[i], names, img.shape[:2]),
            ]
            if feature is not None:
                f = feature[i]
                what = f"{self.feature_layer} #{int(maps.channel[i])}"
                tiles.append(
                    caption(
                        resize(colormap(f, "inferno"), img.shape[:2], nearest=False),
                        f"{what} {f.min():.3g}-{f.max():.3g}",
                    )
                )
                if projections is not None:
                    tiles.append(
                        caption(
                            resize(symmetric_to_uint8(projections[i]), img.shape[:2]),
                            f"deconv {what}",
                        )
                    )
            predicted = _name(names, int(maps.base_label[i]))
            figures.append(
                Figure(
                    hstack(tiles, pad=2),
                    f"probe {i}: true {_name(names, t)}, predicted {predicted}",
                )
            )
        return figures


def label_tile(labels: torch.Tensor, names: list[str], size: tuple[int, int]) -> np.ndarray:
    """A class-label map (H, W) in categorical colours, enlarged to ``size``, with a legend below."""
    classes, counts = labels.unique(return_counts=True)
    order = [int(c) for c in classes[counts.argsort(descending=True)]]
    palette = np.asarray(class_colours(max(len(names), max(order) + 1)), np.uint8)
    picture = resize(palette[labels.cpu().numpy()], size)
    entries = [(palette[c], _name(names, c)) for c in order]
    return np.concatenate([caption(picture, "most probable class"), legend(entries, size[1])])


def class_colours(count: int) -> list[tuple[int, int, int]]:
    """Distinct colours for class indices 0..count-1 (matplotlib's tab10, or tab20 repeating)."""
    from matplotlib import colormaps

    table = colormaps["tab10" if count <= 10 else "tab20"].colors
    return [tuple(int(255 * v + 0.5) for v in table[i % len(table)]) for i in range(count)]


def legend(entries: list[tuple[np.ndarray, str]], width: int, row: int = 12) -> np.ndarray:
    """Colour swatches with names, one per row, on white, ``width`` pixels wide."""
    font = ImageFont.load_default()
    canvas = Image.new("RGB", (width, row * len(entries) + 2), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (colour, text) in enumerate(entries):
        y = 1 + k * row
        draw.rectangle(
            (2, y + 1, 11, y + row - 2), fill=tuple(int(v) for v in colour), outline=(0, 0, 0)
        )
        draw.text((15, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _name(names: list[str], index: int) -> str:
    return names[index] if index < len(names) else str(index)
