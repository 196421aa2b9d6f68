"""What does a unit respond to? Activation maximisation by gradient ascent on the input.

Every target is one image of one batch, so all units of a grid (even of several layers) are found
in a single optimisation. Gradients are taken with ``torch.autograd.grad`` with respect to the
image parameterisation only, with the model frozen (eval mode, ``requires_grad`` off), so weights
and their ``.grad`` are untouched; noise and jitter come from private generators, so the global
RNG state is untouched too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zflight.analysis.attribution import frozen
from zflight.analysis.stopping import checked


@dataclass
class ActMaxResult:
    """Images (U, 3, H, W) in the model's input space; each unit's activation on its image (U,)."""

    images: torch.Tensor
    activations: torch.Tensor


SPATIAL = ("max", "centre", "mean")
TRANSFORMS = ("roll", "robust")

# Lucent's colour correlation of natural images (the square root of ImageNet's RGB covariance,
# ``color_correlation_svd_sqrt``), scaled so its largest column has norm 1: optimising in these
# decorrelated channels lets a step change a colour as natural images do, not a primary alone.
_COLOUR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOUR_CORRELATION = _COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0).max()


class _Reached(Exception):
    """Raised by a hook once every target layer has run, to skip the rest of the forward pass."""


def fourier_scale(size: tuple[int, int], decay: float = 1.0) -> torch.Tensor:
    """1/f^decay weights of an rfft2 spectrum (H, W//2+1): equal energy per octave, so the raw
    parameters are decorrelated and plain gradient steps favour low frequencies."""
    h, w = size
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    f = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / f.clamp_min(1.0 / max(h, w)) ** decay


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W), reflect padding."""
    radius = max(1, int(math.ceil(2 * sigma)))
    k = torch.exp(
        -0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device) / sigma) ** 2
    )
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="reflect"),
        k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
        groups=c,
    )
    return F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="reflect"),
        k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
        groups=c,
    )


def robust_transform(x: torch.Tensor, generator: torch.Generator, jitter: int) -> torch.Tensor:
    """One random transformation of the batch, as Lucent's standard transforms: a shift of up to
    ``jitter`` pixels, a scale in [0.9, 1.1] and a rotation in [-10, 10] degrees, with the
    image's mean (zero after normalisation) brought in at the borders. A unit that answers the
    pattern under all of them, not one exact placement of pixels, gives a readable picture."""
    h, w = x.shape[-2:]
    scale = 1.0 + (int(torch.randint(0, 11, (1,), generator=generator)) - 5) / 50
    angle = math.radians(float(torch.randint(-10, 11, (1,), generator=generator)))
    dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=generator) * 2.0).tolist()
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor(
        [[cos, -sin, dx / w], [sin, cos, dy / h]], dtype=x.dtype, device=x.device
    ).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """(N,) mean absolute difference between neighbouring pixels of each image."""
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    return dx + dy


def activation_maximization(
    model: nn.Module,
    targets: Sequence[tuple[nn.Module, int]],
    size: tuple[int, int],
    *,
    steps: int = 64,
    lr: float = 0.03,
    param: str = "fourier",
    init: str = "noise",
    init_std: float = 0.01,
    jitter: int = 2,
    blur_every: int = 0,
    blur_sigma: float = 0.5,
    l2: float = 1e-3,
    tv: float = 1e-2,
    decay: float = 1.0,
    seed: int = 0,
    channels: int = 3,
    bounds: tuple[Sequence[float], Sequence[float]] | None = None,
    spatial: str = "max",
    decorrelate: bool = False,
    squash: bool = False,
    transforms: str = "roll",
    subset: Sequence[int] | None = None,
) -> ActMaxResult:
    """Find, for each ``(layer, unit)`` in ``targets``, an input that excites that unit.

    The objective of image i is the activation of feature map ``unit`` of ``layer``'s output
    (conv layers), reduced over positions by ``spatial``, or the single ``unit`` output (linear
    layers, e.g. a class logit of fc8), minus
    ``l2`` times the image's mean square and ``tv`` times its total variation; Adam ascends it
    for ``steps`` steps. Regularisers, all in the model's (normalised) input space:

    - ``param="fourier"`` (default): the image is the inverse rFFT of a 1/f^``decay``-scaled
      spectrum, which decorrelates pixels and suppresses high-frequency noise;
      ``param="pixel"`` optimises pixels directly.
    - ``jitter``: a random roll of up to that many pixels each step (0 turns it off).
    - ``blur_every``: every that many steps blur the pixels with ``blur_sigma`` (pixel only).
    - ``init``: ``"noise"`` (N(0, ``init_std``) in the parameterisation) or ``"gray"`` (zeros,
      the data set's mean after normalisation).
    - ``spatial``: ``"max"`` (default) the map's strongest position, the single activation the
      deconvnet's top-9 mining ranks by; ``"centre"`` the middle position (Yosinski et al.
      2015); ``"mean"`` the mean over the map, which deep layers with small maps rarely make
      positive because positions near the border see mostly padding.
    - ``bounds``: per-channel (low, high) of valid inputs, e.g. ``((0 - mean) / std, (1 - mean)
      / std)``; the image is clamped into them (the gradient passes the clamp unchanged), so
      the network only sees pictures it could be shown. ``None`` leaves it unbounded.
    - ``decorrelate`` (3 channels): the parameters are colours in a decorrelated space, mixed
      into RGB by ``COLOUR_CORRELATION`` (Lucent's colour decorrelation).
    - ``squash`` (with ``bounds``): the image is ``low + (high - low) * sigmoid(x)`` instead of
      clamped, as Lucent maps to valid pixels: colours approach the bounds smoothly and a
      gradient never dies at a clamp, so few pixels end saturated.
    - ``transforms``: ``"roll"`` a random roll of up to ``jitter`` pixels each step;
      ``"robust"`` a random shift, scale and rotation each step (``robust_transform``, Lucent's
      transformation robustness).

    ``subset``: optimise only these targets (indices into ``targets``), exactly as they would be
    optimised among all of them (the same start, the same jitter), so ranks can split the units
    and gather the results.

    Returns the images and the unit activations on them (without jitter or penalties).
    """
    if param not in ("fourier", "pixel"):
        raise ValueError(f"param must be 'fourier' or 'pixel'; got {param!r}")
    if init not in ("noise", "gray"):
        raise ValueError(f"init must be 'noise' or 'gray'; got {init!r}")
    if spatial not in SPATIAL:
        raise ValueError(f"spatial must be one of {', '.join(SPATIAL)}; got {spatial!r}")
    if transforms not in TRANSFORMS:
        raise ValueError(f"transforms must be one of {', '.join(TRANSFORMS)}; got {transforms!r}")
    device = next(model.parameters()).device
    h, w = size
    n = len(targets)
    # Independent streams for the start and the jitter: image i then starts, and is shifted,
    # the same way however many targets share the batch.
    g_init = torch.Generator(device="cpu").manual_seed(seed)
    g_jit = torch.Generator(device="cpu").manual_seed(seed + 1)
    if param == "fourier":
        shape = (n, channels, h, w // 2 + 1, 2)
        scale = fourier_scale((h, w), decay).to(device)
    else:
        shape = (n, channels, h, w)
        scale = None
    z = torch.randn(shape, generator=g_init) * init_std if init == "noise" else torch.zeros(shape)
    if subset is not None:
        z = z[torch.as_tensor(list(subset), dtype=torch.long)]
        targets = [targets[i] for i in subset]
    z = z.to(device).requires_grad_(True)

    if bounds is not None:
        low = torch.as_tensor(bounds[0], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        high = torch.as_tensor(bounds[1], dtype=torch.float32, device=device).view(1, -1, 1, 1)

    mix = COLOUR_CORRELATION.to(device) if decorrelate and channels == 3 else None

    def image() -> torch.Tensor:
        x = (
            z
            if scale is None
            else torch.fft.irfft2(torch.view_as_complex(z) * scale, s=(h, w), norm="ortho")
        )
        if mix is not None:
            x = torch.einsum("ij,njhw->nihw", mix, x)
        if bounds is None:
            return x
        if squash:
            return low + (high - low) * torch.sigmoid(x)
        # Clamp forward, identity backward: the network only sees valid pixels, and a pixel
        # pushed past a bound still gets the gradient that can bring it back.
        return x + (torch.maximum(torch.minimum(x, high), low) - x).detach()

    optimizer = torch.optim.Adam([z], lr=lr)
    with frozen(model), torch.enable_grad():
        for step in checked(range(steps)):
            x = image()
            if transforms == "robust":
                x = robust_transform(x, g_jit, jitter)
            elif jitter > 0:
                dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=g_jit).tolist()
                x = torch.roll(x, (dy, dx), dims=(2, 3))
            objective = _unit_activations(model, x, targets, spatial) - l2 * x.pow(2).flatten(
                1
            ).mean(1)
            if tv > 0:
                objective = objective - tv * total_variation(x)
            (grad,) = torch.autograd.grad(-objective.sum(), z)
            z.grad = grad
            optimizer.step()
            if param == "pixel" and blur_every > 0 and (step + 1) % blur_every == 0:
                with torch.no_grad():
                    z.copy_(_gaussian_blur(z, blur_sigma))
        with torch.no_grad():
            final = image().detach()
            acts = _unit_activations(model, final, targets, spatial)
    return ActMaxResult(final.float(), acts.float())


def _unit_activations(
    model: nn.Module,
    x: torch.Tensor,
    targets: Sequence[tuple[nn.Module, int]],
    spatial: str = "max",
) -> torch.Tensor:
    """(U,) activation of target i's unit on image i; the forward stops after the last target."""
    layers = list(dict.fromkeys(layer for layer, _ in targets))
    outputs: dict[nn.Module, torch.Tensor] = {}

    def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        outputs.setdefault(module, output)
        if len(outputs) == len(layers):
            raise _Reached

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        model(x)
    except _Reached:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer for layer in layers if layer not in outputs]
    if missing:
        raise RuntimeError(f"target layers did not run in the forward pass: {missing}")
    values = torch.zeros(len(targets), device=x.device)
    for layer in layers:
        rows = [i for i, (m, _) in enumerate(targets) if m is layer]
        idx = torch.as_tensor(rows, device=x.device)
        units = torch.as_tensor([targets[i][1] for i in rows], device=x.device)
        picked = outputs[layer][idx, units].float()
        values = values.index_put((idx,), _reduce(picked, spatial))
    return values


def _reduce(picked: torch.Tensor, spatial: str) -> torch.Tensor:
    """(U,) one value per unit from (U,) linear outputs or (U, h, w) maps."""
    if picked.dim() == 1:
        return picked
    if spatial == "centre":
        return picked[:, picked.shape[1] // 2, picked.shape[2] // 2]
    flat = picked.flatten(1)
    return flat.amax(1) if spatial == "max" else flat.mean(1)
