"""HeatMaps: where the network looks for its answer, as Grad-CAM and saliency overlays per epoch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from typing_extensions import override

from zflight.analysis.attribution import gradcam, saliency
from zflight.analysis.images import add_border, caption, grid, hstack, overlay
from zflight.analysis.localization import mass_in_mask, pointing_game
from zflight.callbacks.base import AnalysisContext, VisualizationCallback
from zflight.callbacks.results import Probe, VizResult

_RIGHT, _WRONG = (40, 160, 40), (200, 40, 40)


class HeatMaps(VisualizationCallback):
    """Grad-CAM for the true and the predicted class, and input-gradient saliency, over the probes.

    Figure ``maps``: one row per probe image: the image (green frame if predicted right, red if
    wrong), Grad-CAM of the true class, Grad-CAM of the predicted class, saliency of the true
    class. With object masks, scalars ``pointing_game`` and ``mass_in_mask`` score the true-class
    Grad-CAM exactly as the occlusion callback scores its maps (``saliency_pointing_game`` and
    ``saliency_mass_in_mask`` the saliency map), so both methods share a chart. Three forward and
    three backward passes over the probes: about 0.1 CPU-seconds per call at 64 px.

    Args:
        layer: the conv layer Grad-CAM reads (``conv5`` by default). When the module after it in
            ``model.features`` is a ReLU, its rectified output is used, as in Grad-CAM.
        alpha: opacity of the heat map over the image.
        num_rows: at most this many probe images in the figure (all are scored).
        **kwargs: schedule and probe options of ``VisualizationCallback``.

    Example:
        >>> HeatMaps(layer="conv4", every_n_epochs=2)
    """

    name = "heatmaps"

    def __init__(
        self, layer: str = "conv5", alpha: float = 0.5, num_rows: int = 8, **kwargs
    ) -> None:
        kwargs.setdefault("grad", True)
        super().__init__(**kwargs)
        self.layer = layer
        self.alpha = alpha
        self.num_rows = num_rows

    @override
    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult:
        x, labels = probe.images, probe.labels
        target = rectified_layer(model, self.layer)
        with ctx.autocast():
            with torch.no_grad():
                probs = model(x).float().softmax(1)
            preds = probs.argmax(1)
            cams = gradcam(model, x, target, torch.stack([labels, preds], 1))
            sal = saliency(model, x, labels)
        scalars: dict[str, float] = {}
        if probe.masks is not None:
            masks = probe.masks.bool()
            for prefix, maps in (("", cams[:, 0]), ("saliency_", sal)):
                scalars[f"{prefix}pointing_game"] = pointing_game(maps, masks).float().mean().item()
                scalars[f"{prefix}mass_in_mask"] = mass_in_mask(maps, masks).mean().item()
        return VizResult(figures={"maps": self._figure(probe, probs, cams, sal)}, scalars=scalars)

    def _figure(
        self, probe: Probe, probs: torch.Tensor, cams: torch.Tensor, sal: torch.Tensor
    ) -> np.ndarray:
        names = probe.class_names
        rows = []
        for i, img in enumerate(probe.display()[: self.num_rows]):
            t, p = int(probe.labels[i]), int(probs[i].argmax())

            def panel(heat: torch.Tensor, text: str, img: np.ndarray = img) -> np.ndarray:
                return caption(add_border(overlay(img, heat, self.alpha), (255, 255, 255)), text)

            frame = _RIGHT if t == p else _WRONG
            panels = [
                caption(add_border(img, frame), f"p={probs[i, t]:.2f}"),
                panel(cams[i, 0], f"true {_name(names, t)}"),
                panel(cams[i, 1], f"pred {_name(names, p)}"),
                panel(sal[i], "saliency"),
            ]
            rows.append(hstack(panels, pad=2))
        return grid(rows, ncols=1, pad=2)


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
