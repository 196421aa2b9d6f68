"""Where does the network look for its answer? Grad-CAM and input-gradient saliency maps.

Both take gradients with respect to activations or the input only (``torch.autograd.grad``), with
the parameters' ``requires_grad`` switched off meanwhile, so weights and their ``.grad`` are never
touched; the model runs in eval mode and every module's mode is restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode with parameters that need no gradient inside; modes and flags restored after.

    Gradients then flow only to the input or activations the caller asks for, and no weight's
    ``.grad`` is created or accumulated.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


def _as_targets(targets: torch.Tensor, n: int) -> torch.Tensor:
    """(N,) or (N, K) class indices -> (N, K) long."""
    t = torch.as_tensor(targets).long()
    t = t[:, None] if t.dim() == 1 else t
    if t.dim() != 2 or t.shape[0] != n:
        raise ValueError(f"targets must be (N,) or (N, K) with N={n}; got {tuple(t.shape)}")
    return t


def gradcam(
    model: nn.Module,
    images: torch.Tensor,
    layer: nn.Module,
    targets: torch.Tensor,
    *,
    upsample: bool = True,
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ReLU(sum_c w_c A_c), w_c the spatial mean of d logit/dA_c.

    ``layer``'s output A (N, C, h, w) is read by a forward hook; ``targets`` are class indices,
    (N,) for one map per image or (N, K) for K maps per image from a single forward pass. Returns
    (N, H, W) or (N, K, H, W) float maps, bilinearly resized to the input size unless
    ``upsample=False`` (then at the layer's resolution). Pass a rectified layer (the ReLU after a
    conv) to follow the paper exactly.
    """
    t = _as_targets(targets, images.shape[0])
    captured: list[torch.Tensor] = []
    # The input carries the graph: with the weights frozen nothing else would.
    x = images.detach().requires_grad_(True)
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with frozen(model), torch.enable_grad():
            logits = model(x)
            if not captured:
                raise RuntimeError("the Grad-CAM layer did not run in the model's forward pass")
            acts = captured[0]
            if acts.dim() != 4:
                raise ValueError(
                    f"Grad-CAM needs a (N, C, h, w) layer output; got {tuple(acts.shape)}"
                )
            maps = []
            for k in range(t.shape[1]):
                score = logits.gather(1, t[:, k : k + 1]).sum()
                (grad,) = torch.autograd.grad(score, acts, retain_graph=k + 1 < t.shape[1])
                weights = grad.float().mean(dim=(2, 3), keepdim=True)
                maps.append(F.relu((weights * acts.detach().float()).sum(1)))
    finally:
        handle.remove()
    cams = torch.stack(maps, 1)
    if upsample:
        cams = F.interpolate(cams, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return cams[:, 0] if torch.as_tensor(targets).dim() == 1 else cams


def saliency(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Input-gradient saliency (Simonyan et al. 2014): max over channels of |d logit_target / dx|.

    ``targets`` (N,) or (N, K) class indices; returns (N, H, W) or (N, K, H, W) float maps.
    """
    t = _as_targets(targets, images.shape[0])
    x = images.detach().clone().requires_grad_(True)
    maps = []
    with frozen(model), torch.enable_grad():
        logits = model(x)
        for k in range(t.shape[1]):
            score = logits.gather(1, t[:, k : k + 1]).sum()
            (grad,) = torch.autograd.grad(score, x, retain_graph=k + 1 < t.shape[1])
            maps.append(grad.float().abs().amax(dim=1))
    sal = torch.stack(maps, 1)
    return sal[:, 0] if torch.as_tensor(targets).dim() == 1 else sal


def reduce_channels(attributions: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """(N, C, H, W) attributions to (N, H, W) maps: ``sum`` over channels (signed), ``abs_sum``
    or ``max_abs``; (N, H, W) input is returned as is."""
    if attributions.dim() == 3:
        return attributions
    if how == "sum":
        return attributions.sum(1)
    if how == "abs_sum":
        return attributions.abs().sum(1)
    if how == "max_abs":
        return attributions.abs().amax(1)
    raise ValueError(f"reduce must be one of sum, abs_sum, max_abs; got {how!r}")
