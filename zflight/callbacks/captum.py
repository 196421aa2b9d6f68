"""Any Captum attribution method as a zflight callback: ``method=IntegratedGradients`` (or any
class in ``captum.attr``), its arguments checked against Captum's own signatures when the callback
is built, its maps scored, checked and drawn like the built-in ones.

Captum is an optional extra: ``pip install 'zflight[captum]'``.

Example (config):
    callbacks.ig._target_=zflight.callbacks.captum.CaptumAttribution callbacks.ig.method=IntegratedGradients
    "callbacks.ig.attribute_args={n_steps: 16}"
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from zflight.analysis.attribution import frozen, reduce_channels
from zflight.analysis.images import (
    caption,
    fmt_percent,
    grid,
    overlay,
    resize,
    title_bar,
    with_colorbar,
)
from zflight.callbacks.attribution_checks import AttributionCallback, score_text
from zflight.callbacks.base import AnalysisContext
from zflight.callbacks.results import Figure, Probe, VizResult
from zflight.callbacks.scoring import ScoreProbes, joined

INSTALL = "pip install 'zflight[captum]'"
REDUCTIONS = ("sum", "abs_sum", "max_abs")
_MODEL_ARGS = ("forward_func", "model")  # what Captum calls the network it explains
_GIVEN = ("inputs", "target")  # attribute() arguments the callback supplies


class CaptumMissing(ImportError, ValueError):
    """Captum is not installed (a ValueError too, so a config names it as a bad value)."""


def captum_class(method: str) -> type:
    """The class ``captum.attr.<method>``; a one-line error names how to install Captum or the
    closest valid names."""
    try:
        import captum.attr as attr
    except ImportError:
        raise CaptumMissing(
            f"CaptumAttribution(method={method!r}) needs Captum, which is not installed: {INSTALL}"
        ) from None
    cls = getattr(attr, method, None)
    if not inspect.isclass(cls) or not hasattr(cls, "attribute"):
        names = sorted(n for n in dir(attr) if hasattr(getattr(attr, n), "attribute"))
        close = difflib.get_close_matches(method, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"method: captum.attr has no attribution method {method!r}{hint}; valid: "
            + ", ".join(names)
        )
    return cls


def check_arguments(
    cls: type, init_args: dict[str, Any], attribute_args: dict[str, Any], layer: str | None
) -> None:
    """Check the arguments against ``cls.__init__`` and ``cls.attribute``: unknown names and
    missing required ones are one-line errors listing the valid names."""
    init = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if not init or init[0].name not in _MODEL_ARGS:
        raise ValueError(
            f"method: {cls.__name__} does not take a model as its first argument "
            f"({', '.join(p.name for p in init)}); it cannot be a callback"
        )
    takes_layer = any(p.name == "layer" for p in init)
    if takes_layer and layer is None:
        raise ValueError(f"layer: {cls.__name__} explains a layer; name one (layer=conv5)")
    if layer is not None and not takes_layer:
        raise ValueError(f"layer: {cls.__name__} takes no layer")
    fixed = {init[0].name, "layer"}
    _check("init_args", cls.__name__, init[1:], init_args, fixed)
    attribute = list(inspect.signature(cls.attribute).parameters.values())[1:]
    _check("attribute_args", f"{cls.__name__}.attribute", attribute, attribute_args, set(_GIVEN))


def _check(
    key: str, where: str, params: list[inspect.Parameter], given: dict[str, Any], fixed: set[str]
) -> None:
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    valid = [p.name for p in named if p.name not in fixed]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params)
    for name in given:
        if name in fixed:
            raise ValueError(f"{key}.{name}: the callback sets {name!r} itself")
        if name not in valid and not open_ended:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {key}.{close[0]}?)" if close else ""
            raise ValueError(
                f"{key}.{name}: {where} has no argument {name!r}{hint}; valid: {', '.join(valid)}"
            )
    missing = [
        p.name
        for p in named
        if p.default is p.empty and p.name not in fixed and p.name not in given
    ]
    if missing:
        raise ValueError(f"{key}: {where} needs {', '.join(missing)}; valid: {', '.join(valid)}")


def _tuples(value: Any) -> Any:
    """YAML lists as the tuples Captum expects (window shapes, strides)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def snake(name: str) -> str:
    """``IntegratedGradients`` -> ``integrated_gradients``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class CaptumAttribution(AttributionCallback):
    """Maps of any Captum attribution method, scored and checked like the built-in ones.

    Figure ``maps``: per drawn probe image, the image and the method's map for the true class
    (positive part, scaled to its maximum). Scalars: pointing game and mass in mask on
    ``score_probes`` validation images beside the centre and random-map baselines, deletion and
    insertion AUC against a random order, and the randomisation check (``AttributionCallback``).

    Args:
        method: a class of ``captum.attr`` (``IntegratedGradients``, ``Saliency``,
            ``LayerGradCam``, ``Occlusion``, ``DeepLift``, ``GradientShap``, ...).
        layer: the layer a layer method explains (``conv5``); its maps are resized bilinearly
            to the image.
        init_args: further arguments of the method's constructor (checked against it).
        attribute_args: arguments of its ``attribute`` (``n_steps``, ``sliding_window_shapes``,
            ...; checked against it); ``inputs`` and ``target`` (the true class) are supplied.
        reduce: channels to one map: ``sum`` (signed: positive is evidence for the class),
            ``abs_sum`` or ``max_abs``.
        alpha, num_rows, tile: the figure's overlay opacity, rows and tile size.
        score_probes: validation images the scores use (0: the drawn probes).
        **kwargs: ``AttributionCallback``'s and ``VisualizationCallback``'s arguments; the
            callback's ``name`` defaults to the method's in snake case.

    Raises:
        CaptumMissing: Captum is not installed (the message says how to install it).
        ValueError: an unknown method, an argument the method does not take, a required one
            missing, or an unknown ``reduce``.
    """

    def __init__(
        self,
        method: str = "IntegratedGradients",
        layer: str | None = None,
        init_args: dict[str, Any] | None = None,
        attribute_args: dict[str, Any] | None = None,
        reduce: str = "sum",
        alpha: float = 0.5,
        num_rows: int = 8,
        tile: int = 128,
        score_probes: int = 64,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("grad", True)
        kwargs.setdefault("name", snake(method))
        super().__init__(**kwargs)
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}; got {reduce!r}")
        self.cls = captum_class(method)
        self.init_args = {k: _tuples(v) for k, v in (init_args or {}).items()}
        self.attribute_args = {k: _tuples(v) for k, v in (attribute_args or {}).items()}
        check_arguments(self.cls, self.init_args, self.attribute_args, layer)
        self.method = method
        self.layer = layer
        self.reduce = reduce
        self.alpha = alpha
        self.num_rows = num_rows
        self.tile = tile
        self.methods = {"": method}
        self._scores = ScoreProbes(score_probes, self.probe_seed)

    def attribute(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: Any = None
    ) -> torch.Tensor:
        """(N, H, W) maps of ``images`` for ``labels``: Captum's attribution, reduced over
        channels, resized to the image for a layer method. Weights get no gradient."""
        args: dict[str, Any] = dict(self.init_args)
        if self.layer is not None:
            args["layer"] = (
                model.layer(self.layer)
                if hasattr(model, "layer")
                else (model.get_submodule(self.layer))
            )
        explainer = self.cls(model, **args)
        call = dict(self.attribute_args)
        if "target" in inspect.signature(self.cls.attribute).parameters:
            call["target"] = labels.long()
        context = ctx.autocast() if ctx is not None else torch.autocast("cpu", enabled=False)
        with frozen(model), torch.enable_grad(), context:
            out = explainer.attribute(images.detach().requires_grad_(True), **call)
        out = out[0] if isinstance(out, tuple) else out
        maps = reduce_channels(out.detach().float(), self.reduce)
        if maps.shape[-2:] != images.shape[-2:]:
            maps = F.interpolate(
                maps[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]
        return maps

    @override
    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult:
        scored = self._scores.get(getattr(ctx, "trainer", None), probe)
        both = probe if scored is probe else joined(probe, scored)
        maps = self.attribute(model, both.images, both.labels, ctx)
        part = slice(0, len(both.labels)) if scored is probe else slice(len(probe.labels), None)
        score_maps = {"": maps[part]}
        scalars, figures = self.scores(model, scored, score_maps, ctx)
        if self.due(self.sanity_every_n_epochs, ctx):
            few = slice(0, min(self.sanity_probes, len(probe.labels)))
            images, labels = probe.images[few], probe.labels[few]
            values, fig, _ = self.sanity(
                model,
                lambda net: {"": self.attribute(net, images, labels, ctx)},
                probe.display()[few],
                ctx,
            )
            scalars.update(values)
            if fig is not None:
                figures["sanity"] = fig
        if ctx.rank == 0:
            figures["maps"] = self._figure(model, probe, maps[: len(probe.labels)], ctx, scalars)
        return VizResult(figures=figures, scalars=scalars)

    def _figure(
        self,
        model: nn.Module,
        probe: Probe,
        maps: torch.Tensor,
        ctx: AnalysisContext,
        scalars: dict[str, float],
    ) -> Figure:
        with torch.no_grad(), ctx.autocast():
            probs = model(probe.images).float().softmax(1)
        names = probe.class_names
        pictures = probe.display()[: self.num_rows]
        scale = max(1, -(-self.tile // pictures[0].shape[0]))
        size = (pictures[0].shape[0] * scale, pictures[0].shape[1] * scale)
        cells: list[np.ndarray] = []
        for i, picture in enumerate(pictures):
            img = resize(picture, size)
            t = int(probe.labels[i])
            label = names[t] if t < len(names) else str(t)
            m = maps[i].clamp_min(0)
            hi = max(float(m.max()), 1e-12)
            cells.append(caption(img, f"{label}, p {fmt_percent(probs[i, t])}"))
            cells.append(caption(overlay(img, m, self.alpha, "jet", 0.0, hi), self.method))
        body = with_colorbar(grid(cells, ncols=4, pad=3), 0.0, 1.0, "jet", "of max")
        layer = f" at {self.layer}" if self.layer else ""
        title = f"Captum {self.method}{layer}, epoch {ctx.epoch}"
        text = (
            f"Captum {self.method}{layer} for the true class of {len(pictures)} probe images, "
            f"epoch {ctx.epoch}: the image, then the map's positive part ({self.reduce} over "
            "channels), scaled to its maximum. " + score_text(scalars, "", self.method)
        )
        return Figure(title_bar(body, title), text.strip())
