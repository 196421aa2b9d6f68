"""HeatMaps: where the network looks for its answer, as Grad-CAM and saliency overlays per epoch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from typing_extensions import override

from zflight.analysis.attribution import gradcam, saliency
from zflight.analysis.images import (
    add_border,
    caption,
    fmt_percent,
    grid,
    overlay,
    resize,
    title_bar,
    with_colorbar,
)
from zflight.analysis.shards import index, sharded
from zflight.callbacks.attribution_checks import AttributionCallback, score_text
from zflight.callbacks.base import AnalysisContext
from zflight.callbacks.results import Figure, Probe, VizResult
from zflight.callbacks.scoring import ScoreProbes, joined

_RIGHT, _WRONG, _WHITE = (40, 160, 40), (200, 40, 40), (255, 255, 255)


class HeatMaps(AttributionCallback):
    """Grad-CAM for the true and the predicted class, and input-gradient saliency.

    Figure ``maps``: one row per image: the image (green frame if predicted right, red if
    wrong), Grad-CAM of the true class, Grad-CAM of the predicted class where it differs from the
    true one, saliency of the true class; each map on its own scale from 0 to its maximum (one
    colour bar). The rows are the probes, in the same order every epoch, so an image can be
    followed; figure ``misclassified`` (in epochs with any) shows the misclassified images of the
    probes and the score set alike. With object masks, scalars ``pointing_game`` and
    ``mass_in_mask`` score the true-class Grad-CAM over ``score_probes`` validation images drawn
    separately from the probes, exactly as the occlusion callback scores its maps
    (``saliency_pointing_game`` and ``saliency_mass_in_mask`` the saliency map), so both methods
    share a chart; each beside the same score of the image centre and of a uniform random map
    (``..._baseline_centre``, ``..._baseline_random``) and its margin over the better one.
    Figures ``faithfulness`` (deletion and insertion curves against a random order, with the
    AUCs as scalars) and ``sanity`` (the maps as the layers are randomised from the top) come
    from ``AttributionCallback``.

    Args:
        layer: the conv layer Grad-CAM reads (``conv5`` by default). When the module after it in
            ``model.features`` is a ReLU, its rectified output is used, as in Grad-CAM.
        alpha: opacity of the heat map over the image.
        num_rows: at most this many images in the figure.
        tile: pictures are enlarged to at least this many pixels a side.
        score_probes: validation images the scores are computed on (a seeded set of their own;
            0 scores the probes).
        **kwargs: the checks' options of ``AttributionCallback`` (faithfulness, sanity) and the
            schedule and probe options of ``VisualizationCallback``.

    Example:
        >>> HeatMaps(layer="conv4", every_n_epochs=2)
    """

    name = "heatmaps"
    methods = {"": "Grad-CAM", "saliency_": "saliency"}

    def __init__(
        self,
        layer: str = "conv5",
        alpha: float = 0.5,
        num_rows: int = 8,
        tile: int = 128,
        score_probes: int = 64,
        **kwargs,
    ) -> None:
        kwargs.setdefault("grad", True)
        super().__init__(**kwargs)
        self.layer = layer
        self.alpha = alpha
        self.num_rows = num_rows
        self.tile = tile
        self._scores = ScoreProbes(score_probes, self.probe_seed)

    @override
    def estimate_forwards(
        self, image_shape: tuple[int, ...], world_size: int, masks: bool
    ) -> float:
        images = self.num_probes + (self._scores.num if masks else 0)
        # a forward for the probabilities; Grad-CAM: a forward and a backward per class (true,
        # predicted); saliency: a forward and a backward (a backward with frozen weights = 1 forward)
        return -(-images // world_size) * 6.0

    @override
    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult | None:
        scored = self._scores.get(getattr(ctx, "trainer", None), probe)
        both = probe if scored is probe else joined(probe, scored)
        x, labels = both.images, both.labels
        target = rectified_layer(model, self.layer)

        def attributed(rows: list[int]) -> tuple[torch.Tensor, ...]:
            xs, ys = index(x, rows), index(labels, rows)
            with ctx.autocast():
                with torch.no_grad():
                    p = model(xs).float().softmax(1)
                cam = gradcam(model, xs, target, torch.stack([ys, p.argmax(1)], 1))
                return p, cam.float(), saliency(model, xs, ys).float()

        # images split across ranks (each rank its share), gathered on every rank
        probs, cams, sal = sharded(attributed, len(x), ctx.rank, ctx.world_size, ctx.all_gather)
        preds = probs.argmax(1)
        part = slice(0, len(x)) if scored is probe else slice(len(probe.labels), len(x))
        maps = {"": cams[part, 0], "saliency_": sal[part]}
        scalars, figures = self.scores(model, scored, maps, ctx)
        if self.due(self.sanity_every_n_epochs, ctx):
            few = slice(0, min(self.sanity_probes, len(probe.labels)))
            values, fig, _ = self.sanity(
                model,
                self._attribute(probe.images[few], probe.labels[few], ctx),
                probe.display()[few],
                ctx,
            )
            scalars.update(values)
            if fig is not None:
                figures["sanity"] = fig
        if ctx.rank != 0:  # rank 0 draws
            return None
        num_scored = 0 if scored is probe else len(scored.labels)
        rows = list(range(min(len(probe.labels), self.num_rows)))
        figures["maps"] = self._figure(both, rows, probs, cams, sal, num_scored, ctx.epoch)
        scores = " ".join(score_text(scalars, p, n) for p, n in self.methods.items())
        if scores:
            figures["maps"].caption += " " + scores
        wrong = misclassified_rows(preds != labels, self.num_rows)
        if wrong:
            figures["misclassified"] = self._figure(
                both, wrong, probs, cams, sal, num_scored, ctx.epoch, "misclassified"
            )
        return VizResult(figures=figures, scalars=scalars)

    def _attribute(self, images: torch.Tensor, labels: torch.Tensor, ctx: AnalysisContext):
        """Every method's maps of ``images`` on a given network (the sanity check's copies)."""

        def attribute(net: nn.Module) -> dict[str, torch.Tensor]:
            with ctx.autocast():
                cam = gradcam(net, images, rectified_layer(net, self.layer), labels)
                return {"": cam, "saliency_": saliency(net, images, labels)}

        return attribute

    def _figure(
        self,
        probe: Probe,
        rows: list[int],
        probs: torch.Tensor,
        cams: torch.Tensor,
        sal: torch.Tensor,
        num_scored: int,  # 0: the probes themselves
        epoch: int,
        which: str = "probe",
    ) -> Figure:
        names = probe.class_names
        pictures = probe.display()
        scale = max(1, -(-self.tile // pictures[0].shape[0]))
        size = (pictures[0].shape[0] * scale, pictures[0].shape[1] * scale)
        cells = []
        for i in rows:
            img = resize(pictures[i], size)
            t, p = int(probe.labels[i]), int(probs[i].argmax())

            def panel(heat: torch.Tensor, text: str, img: np.ndarray = img) -> np.ndarray:
                hi = max(float(heat.max()), 1e-12)
                return caption(
                    add_border(overlay(img, heat, self.alpha, "jet", 0.0, hi), _WHITE), text
                )

            head = f"{_name(names, t)}, p {fmt_percent(probs[i, t])}"
            tiles = [caption(add_border(img, _RIGHT if t == p else _WRONG), head)]
            tiles.append(panel(cams[i, 0], f"Grad-CAM {_name(names, t)} (true)"))
            if t == p:
                tiles.append(caption(add_border(_same_tile(size), _WHITE), "predicted: the same"))
            else:
                tiles.append(
                    panel(cams[i, 1], f"Grad-CAM {_name(names, p)} {fmt_percent(probs[i, p])}")
                )
            tiles.append(panel(sal[i], f"saliency {_name(names, t)}"))
            cells += tiles
        body = grid(cells, ncols=4, pad=3)
        body = with_colorbar(body, 0.0, 1.0, "jet", "of max")
        wrong = sum(int(probs[i].argmax()) != int(probe.labels[i]) for i in rows)
        title = (
            f"Grad-CAM ({self.layer}) and saliency, epoch {epoch}: {len(rows)} probe images, "
            f"{wrong} misclassified"
            if which == "probe"
            else f"Grad-CAM ({self.layer}) and saliency, epoch {epoch}: {len(rows)} misclassified"
        )
        order = (
            "The same probe images every epoch."
            if which == "probe"
            else "Misclassified probe and score images."
        )
        note = (
            "Rows: image (green frame right, red wrong; p of the true class), Grad-CAM of the true "
            "class, Grad-CAM of the predicted class where it differs, saliency of the true class. "
            f"Each map is scaled from 0 to its own maximum (colour bar). {order}"
        )
        shown = (
            f"the {len(rows)} probe images ({wrong} misclassified; the same images every epoch)"
            if which == "probe"
            else f"{len(rows)} misclassified validation images"
        )
        text = (
            f"Grad-CAM at {self.layer} and input-gradient saliency for {shown}, epoch {epoch}; "
            "each map scaled to its maximum. "
            + (
                f"Scores use {num_scored} other validation images."
                if num_scored
                else "Scores use the drawn probes."
            )
        )
        return Figure(title_bar(body, title, note), text)


def misclassified_rows(wrong: torch.Tensor, num_rows: int) -> list[int]:
    """Rows of the ``misclassified`` figure: the misclassified images (probes, then the score
    set, in order); at most ``num_rows``."""
    return [i for i, w in enumerate(wrong.tolist()) if w][:num_rows]


def _same_tile(size: tuple[int, int]) -> np.ndarray:
    return np.full((*size, 3), 245, np.uint8)


def rectified_layer(model: nn.Module, name: str) -> nn.Module:
    """``model.layer(name)``, or the ReLU right after it in ``model.features`` when there is one."""
    layer = model.layer(name)
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        children = list(features.children())
        for i, child in enumerate(children[:-1]):
            if child is layer and isinstance(children[i + 1], nn.ReLU):
                return children[i + 1]
    return layer


def _name(names: list[str], index: int) -> str:
    return names[index] if index < len(names) else str(index)
