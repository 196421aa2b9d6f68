"""How invariant are the features? The paper's Fig. 5: translate, scale and rotate images and
measure how far each layer's feature vector moves, and what happens to P(true class).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zflight.analysis.attribution import frozen

TRANSFORMS = ("translate", "scale", "rotate")


def transform_images(images: torch.Tensor, kind: str, values: Sequence[float]) -> torch.Tensor:
    """(V, N, C, H, W): ``images`` (N, C, H, W) under each transform value, bilinear, zero fill.

    ``translate``: vertical shift by a fraction of the height (positive moves content down);
    ``scale``: zoom about the centre (2.0 doubles the object's size); ``rotate``: degrees,
    counter-clockwise about the centre as displayed. Zero fill is the data set's mean colour
    for normalised images.
    """
    if kind not in TRANSFORMS:
        raise ValueError(f"kind must be one of {TRANSFORMS}; got {kind!r}")
    n, c, h, w = images.shape
    v = torch.as_tensor(list(values), dtype=torch.float32, device=images.device)
    theta = torch.zeros(len(v), 2, 3, device=images.device)
    if kind == "translate":
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 1, 2] = -2.0 * v
    elif kind == "scale":
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / v
    else:
        # Output pixel p samples the input at R(-a) p in pixel units; the grid's x and y are
        # normalised by width and height separately, hence the aspect factors.
        a = v * (math.pi / 180.0)
        cos, sin = torch.cos(a), torch.sin(a)
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = -sin * h / w
        theta[:, 1, 0] = sin * w / h
        theta[:, 1, 1] = cos
    theta = theta.repeat_interleave(n, dim=0)
    grid = F.affine_grid(theta, [len(v) * n, c, h, w], align_corners=False)
    x = images.float().repeat(len(v), 1, 1, 1)
    out = F.grid_sample(
        x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.to(images.dtype).view(len(v), n, c, h, w)


@dataclass
class InvarianceCurve:
    """One transformation: values (V,), per-layer normalised distances (V, N), P(true) (V, N)."""

    kind: str
    values: torch.Tensor
    distances: dict[str, torch.Tensor]
    p_true: torch.Tensor

    def area(self, curve: torch.Tensor) -> torch.Tensor:
        """(N,) trapezoidal area under a (V, N) curve over the values rescaled to [0, 1] (its mean
        height), so areas of different transformations and layers are comparable."""
        v = self.values.double()
        span = float(v.max() - v.min())
        if len(v) < 2 or span == 0:
            return curve.double().mean(0).float()
        x = (v - v.min()) / span
        order = torch.argsort(x)
        return torch.trapezoid(curve.double()[order], x[order].to(curve.device), dim=0).float()


def invariance_curves(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    layers: Mapping[str, nn.Module],
    transforms: Mapping[str, Sequence[float]],
) -> list[InvarianceCurve]:
    """Feature distance and P(true class) as images are transformed (Zeiler & Fergus, Fig. 5).

    For each transformation in ``transforms`` (name -> values) and each named layer, the
    Euclidean distance between the flattened output of the layer for the original and for the
    transformed image, divided by the original's norm. Runs in eval mode without gradients,
    one forward pass per transformation over all values and images.
    """
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(_recorder(outputs, name)) for name, m in layers.items()]
    curves = []
    try:
        with frozen(model), torch.no_grad():
            model(images)
            originals = {name: out.flatten(1).float() for name, out in outputs.items()}
            n = images.shape[0]
            for kind, values in transforms.items():
                moved = transform_images(images, kind, values)
                logits = model(moved.flatten(0, 1)).float()
                p = logits.softmax(1).view(len(values), n, -1)
                p_true = p.gather(2, labels.view(1, n, 1).expand(len(values), n, 1)).squeeze(2)
                distances = {}
                for name, orig in originals.items():
                    feats = outputs[name].flatten(1).float().view(len(values), n, -1)
                    dist = (feats - orig).norm(dim=2)
                    distances[name] = dist / orig.norm(dim=1).clamp_min(1e-12)
                curves.append(
                    InvarianceCurve(
                        kind, torch.as_tensor(list(values), dtype=torch.float32), distances, p_true
                    )
                )
    finally:
        for handle in handles:
            handle.remove()
    return curves


def _recorder(outputs: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        outputs[name] = output.detach()

    return hook
