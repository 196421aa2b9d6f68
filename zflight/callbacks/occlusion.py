"""Occlusion: what the network needs to see, mapped by sliding a grey patch over each probe image
(Zeiler & Fergus 2013, Fig. 7), every N epochs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from typing_extensions import override

from zflight.analysis.deconvnet import Deconvnet
from zflight.analysis.images import (
    caption,
    class_colours,
    colormap,
    contrast,
    fmt_percent,
    hstack,
    legend,
    marked_tile,
    overlay,
    resize,
    title_bar,
    vstack,
    with_colorbar,
)
from zflight.analysis.occlusion import FILLS, METHODS, OcclusionMaps, occlusion_maps, window_starts
from zflight.analysis.scaled import occluder_for
from zflight.callbacks.attribution_checks import AttributionCallback, score_text
from zflight.callbacks.base import AnalysisContext
from zflight.callbacks.results import Figure, Probe, VizResult
from zflight.callbacks.scoring import ScoreProbes


class Occlusion(AttributionCallback):
    """Occlusion sensitivity of the probe images, one panel per image.

    Figure ``panels``, per probe image: the image; the probability of the true class with the
    square at each position, as a heat map over the image; the most probable class at each
    position, colour-coded with a legend; the total activation of the layer-5 feature map that is
    strongest on the unoccluded image; and that map's deconvnet projection. Per-position values
    are placed on the image as the mean over the windows covering each pixel (labels: the nearest
    covering window), see ``zflight.analysis.occlusion``.

    With object masks, scalars score the drop in true-class probability (unoccluded minus
    occluded, on the image) over ``score_probes`` validation images drawn separately from the
    pictured ones: ``pointing_game`` is the share of images whose largest drop lies in the mask,
    ``mass_in_mask`` the share of the positive drop that falls inside it, averaged over images;
    each beside the same score of the image centre and of a uniform random map
    (``..._baseline_centre``, ``..._baseline_random``) and its margin over the better one. A
    drop within ``OcclusionMaps.rtol`` of the base probability is rounding and counts as zero.
    Figures ``faithfulness`` (deletion and insertion of pixels in the order of the drop map,
    against a random order, with the AUCs as scalars) and ``sanity`` (the drop maps as the
    layers are randomised from the top) come from ``AttributionCallback``.

    Positions are split across ranks and gathered; only rank 0 draws.

    Args:
        size, stride: occluder side and step in pixels; ``None`` (default) follows the image:
            an eighth of the side, stepping by its size (``zflight.analysis.scaled.occluder_for``):
            8 px every 8 px on 64 px shapes, 28 px every 28 px at 224 px, 8 x 8 positions at
            both. At 64 px that is cheap enough to score 64 images every epoch on CPU and small
            enough against the shapes (about 24 px) that the largest drop lands on the object
            (pointing game 0.88 on 64 images after the default run, where the image centre
            gets 0.81 and a random map 0.27; 0.80 with a 16 px square, below the centre).
        fill: ``"mean"`` (data set mean, gray), ``"zero"`` (black), ``"blur"`` or a constant.
        feature_layer: layer whose strongest map is tracked and projected.
        deconv: draw the deconvnet projection of that map.
        method: ``"auto"``, ``"incremental"`` or ``"full"`` (see ``occlusion_maps``).
        max_batch_bytes: activation memory one chunk of occluded positions may take.
        tile: pictures are enlarged (nearest neighbour) to at least this many pixels a side.
        score_probes: validation images the scores are computed on (a seeded set of their own;
            0 scores the pictured probes). Only data with object masks is scored: without them
            no score set is built and no map is computed beyond the pictured probes.
        **kwargs: the checks' options of ``AttributionCallback`` (faithfulness, sanity) and the
            schedule and probe options of ``VisualizationCallback``.

    Raises:
        ValueError: for an unknown ``fill`` or ``method``, or a stride outside [1, size].

    Example:
        >>> Occlusion(size=24, stride=8, fill="blur", every_n_epochs=5)
    """

    name = "occlusion"
    methods = {"": "occlusion"}

    def __init__(
        self,
        size: int | None = None,
        stride: int | None = None,
        fill: str | float = "mean",
        feature_layer: str = "conv5",
        deconv: bool = True,
        method: str = "auto",
        max_batch_bytes: int = 256 << 20,
        tile: int = 128,
        score_probes: int = 64,
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
        if size is not None:
            window_starts(size, size, stride or size)  # checks 1 <= stride <= size
        elif stride is not None:
            raise ValueError("occlusion stride needs a size (or leave both to follow the image)")
        self.size = size
        self.stride = stride
        self._square = (size or 8, stride or size or 8)  # resolved for the image size at run time
        self.fill = fill
        self.feature_layer = feature_layer
        self.deconv = deconv
        self.method = method
        self.max_batch_bytes = max_batch_bytes
        self.tile = tile
        self._scores = ScoreProbes(score_probes, self.probe_seed)

    def square(self, side: int) -> tuple[int, int]:
        """(size, stride) of the occluder on images ``side`` pixels wide."""
        if self.size is None:
            return occluder_for(side)
        return self.size, self.stride or self.size

    @override
    def estimate_forwards(
        self, image_shape: tuple[int, ...], world_size: int, masks: bool
    ) -> float:
        size, stride = self.square(image_shape[-1])
        positions = len(window_starts(image_shape[-2], size, stride)) * len(
            window_starts(image_shape[-1], size, stride)
        )
        images = self.num_probes + (self._scores.num if masks else 0)
        return (images * (positions + 1)) / world_size + 2 * self.num_probes

    @override
    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult | None:
        self._square = self.square(probe.images.shape[-1])
        has_trunk = isinstance(getattr(model, "features", None), nn.Sequential)
        maps = self._maps(model, probe, ctx, self.feature_layer if has_trunk else None)
        scored = self._scores.get(getattr(ctx, "trainer", None), probe)
        score_maps = maps if scored is probe else self._maps(model, scored, ctx, None)
        drops = {"": score_maps.upsample(score_maps.drop())}
        scalars, figures = self.scores(model, scored, drops, ctx)
        if self.due(self.sanity_every_n_epochs, ctx):
            few = slice(0, min(self.sanity_probes, len(probe.labels)))
            sub = Probe(probe.images[few], probe.labels[few], None, probe.mean, probe.std)

            def attribute(net: nn.Module) -> dict[str, torch.Tensor]:
                m = self._maps(net, sub, ctx, None)
                return {"": m.upsample(m.drop())}

            values, fig, _ = self.sanity(model, attribute, probe.display()[few], ctx)
            scalars.update(values)
            if fig is not None:
                figures["sanity"] = fig
        if ctx.rank != 0:
            return None
        projections = None
        if self.deconv and maps.channel is not None:
            projections = Deconvnet(model.features).project(
                probe.images, self.feature_layer, maps.channel
            )
        panels = self.panels(probe, maps, projections)
        wrong = int((maps.base_label != probe.labels.to(maps.base_label.device)).sum())
        what = f"one {self.feature_layer} map" if maps.channel is not None else ""
        scores = (
            "Scores use these images."
            if scored is probe
            else f"Scores use {len(scored.labels)} other validation images."
        )
        flat = sum(is_flat(p) for p in maps.prob)
        unmoved = (
            f" On {flat} of {len(panels)} images the patch changes p(true class) nowhere "
            "('no effect'): it is too small to hide what they are recognised by."
            if flat
            else ""
        )
        text = (
            f"Occlusion of {len(panels)} probe images ({wrong} misclassified) by a grey "
            f"{self._square[0]} px patch moved {self._square[1]} px at a time. Per image: "
            + self._shown("the true class", what, projections is not None)
            + unmoved
            + " "
            + scores
        )
        baselines = score_text(scalars, "", "Occlusion drop")
        text += (" " + baselines) if baselines else ""
        figures["panels"] = Figure(vstack([f.image for f in panels], pad=6), text)
        return VizResult(figures=figures, scalars=scalars)

    def _maps(
        self, model: nn.Module, probe: Probe, ctx: AnalysisContext, feature_layer: str | None
    ) -> OcclusionMaps:
        return occlusion_maps(
            model,
            probe.images,
            probe.labels,
            size=self._square[0],
            stride=self._square[1],
            fill=self.fill,
            mean=probe.mean,
            std=probe.std,
            feature_layer=feature_layer,
            method=self.method,
            max_batch_bytes=self.max_batch_bytes,
            rank=ctx.rank,
            world_size=ctx.world_size,
            all_gather=ctx.all_gather,
            autocast=ctx.autocast,
        )

    def panels(
        self, probe: Probe, maps: OcclusionMaps, projections: torch.Tensor | None
    ) -> list[Figure]:
        """One titled, captioned picture per probe image: the image, p(true) with the square at
        each position (colour bar 0 to 1), the most probable class (legend), the total of the
        tracked feature map (colour bar) and its deconvnet projection."""
        names = probe.class_names
        prob, labels = maps.upsample(maps.prob), maps.label_image()
        feature = maps.upsample(maps.feature) if maps.feature is not None else None
        scale = max(1, -(-self.tile // min(maps.image_size)))
        figures = []
        for i, img in enumerate(probe.display()):
            img = resize(img, (img.shape[0] * scale, img.shape[1] * scale))
            t, pred = int(probe.labels[i]), int(maps.base_label[i])
            true, predicted = _name(names, t), _name(names, pred)
            tiles = [
                caption(img, f"p({true}) {fmt_percent(maps.base_prob[i])}"),
                caption(
                    with_colorbar(overlay(img, prob[i], 0.6, "jet", 0.0, 1.0), 0.0, 1.0, "jet"),
                    occluded_caption(true, prob[i]),
                ),
                label_tile(labels[i], names, img.shape[:2]),
            ]
            what = ""
            if feature is not None:
                f = feature[i]
                what = f"{self.feature_layer} #{int(maps.channel[i])}"
                lo, hi = float(f.min()), float(f.max())
                silent = marked_tile(img.shape[:2], "silent")  # no map fires on this image
                heat = silent
                if hi > 0:
                    heat = resize(colormap(f, "inferno", lo, hi), img.shape[:2], nearest=False)
                    heat = with_colorbar(heat, lo, hi, "inferno")
                tiles.append(caption(heat, f"{what} total"))
                if projections is not None:
                    deconv = resize(contrast(projections[i]), img.shape[:2]) if hi > 0 else silent
                    tiles.append(caption(deconv, f"deconv {what}"))
            verdict = "classified correctly" if t == pred else f"misclassified as {predicted}"
            title = f"Occlusion, probe {i}: {true} ({verdict})"
            text = (
                f"Occlusion of probe {i} (true {true}, predicted {predicted}) by a grey "
                f"{self._square[0]} px patch moved {self._square[1]} px at a time: "
                + self._shown(true, what, projections is not None)
            )
            figures.append(Figure(title_bar(hstack(tiles, pad=2), title), text))
        return figures

    def _shown(self, true: str, what: str, projected: bool) -> str:
        """What one panel shows, in words (``what``: the tracked feature, "" without one)."""
        shown = [
            f"p({true}) with the grey patch centred at each position (colour bar 0 to 1)",
            "the most probable class there (legend)",
        ]
        if what:
            shown.append(
                f"the total activation of {what}, the {self.feature_layer} map strongest on the "
                "unoccluded image (colour bar)"
            )
        if what and projected:
            shown.append("its deconvnet projection")
        return "; ".join(shown) + "."


def is_flat(prob: torch.Tensor, flat: float = 0.01) -> bool:
    """Whether a p(true) map varies by less than ``flat``: the patch changed nothing anywhere."""
    return float(prob.max()) - float(prob.min()) < flat


def occluded_caption(true: str, prob: torch.Tensor, flat: float = 0.01) -> str:
    """The p(true) tile's caption. When the map is flat (``is_flat``) the patch changes nothing
    anywhere (too small for the object): the caption says so, since the colour then only tints
    the picture (the image's own tile gives p(true), unchanged)."""
    if is_flat(prob, flat):
        return f"p({true}): no effect"  # short: a tile is 128 px wide
    return f"p({true}) if the patch is here"


def label_tile(labels: torch.Tensor, names: list[str], size: tuple[int, int]) -> np.ndarray:
    """A class-label map (H, W) in categorical colours, enlarged to ``size``, with a legend below."""
    classes, counts = labels.unique(return_counts=True)
    order = [int(c) for c in classes[counts.argsort(descending=True)]]
    palette = np.asarray(class_colours(max(len(names), max(order) + 1)), np.uint8)
    picture = resize(palette[labels.cpu().numpy()], size)
    entries = [(palette[c], _name(names, c)) for c in order]
    return vstack([caption(picture, "most probable class"), legend(entries, size[1])], pad=0)


def _name(names: list[str], index: int) -> str:
    return names[index] if index < len(names) else str(index)
