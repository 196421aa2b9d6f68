"""The deconvnet of Zeiler & Fergus (2013, section 2.1), built from any plain convolutional trunk.

To project one activation down to pixel space, every other activation of its layer is zeroed and
the signal walks back through the trunk: max-pools are undone with the switches recorded in the
forward pass (*summing* where overlapping windows share a switch, the transpose of pooling),
ReLUs rectify the backward signal, and convolutions are undone with their transposed filters
(no bias). This equals the gradient of the activation with every ReLU's backward replaced by
``relu(grad)``, seeded with the activation's value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LRN_MODES = ("identity", "gradient")


def resolve_layer(trunk: nn.Sequential, layer: str) -> int:
    """Index of the trunk child whose output is ``layer``.

    ``layer`` names a child; a Conv2d directly followed by a ReLU stands for that ReLU's output
    (the rectified map the paper shows). ``"convK"`` also works on trunks with numbered children
    (torchvision's ``features``): it is the K-th Conv2d.
    """
    names = list(trunk._modules)
    modules = list(trunk._modules.values())
    if layer in trunk._modules:
        idx = names.index(layer)
    else:
        match = re.fullmatch(r"conv(\d+)", layer)
        convs = [i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)]
        if match is None or not 1 <= int(match.group(1)) <= len(convs):
            raise KeyError(
                f"no layer {layer!r} in the trunk; valid names: {', '.join(names)}"
                f" or conv1..conv{len(convs)}"
            )
        idx = convs[int(match.group(1)) - 1]
    if (
        isinstance(modules[idx], nn.Conv2d)
        and idx + 1 < len(modules)
        and isinstance(modules[idx + 1], nn.ReLU)
    ):
        idx += 1
    return idx


def as_pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    """(v, v) for an int, else the first two entries: kernel, stride, padding as a pair."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def receptive_field(trunk: nn.Sequential, layer: str) -> tuple[int, int, int]:
    """(size, stride, offset) in input pixels of one unit of ``layer``, ignoring image borders.

    Unit ``p`` (along either axis) sees input pixels ``offset + p * stride`` up to, not including,
    ``offset + p * stride + size``; ``offset`` is negative where padding lies before the image.
    Assumes square kernels, strides and paddings (it reports the vertical axis).
    """
    size, stride, offset = 1, 1, 0
    for module in list(trunk._modules.values())[: resolve_layer(trunk, layer) + 1]:
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            if isinstance(module.padding, str):
                raise ValueError(f"receptive_field needs numeric padding, got {module.padding!r}")
            k = as_pair(module.kernel_size)[0]
            s = as_pair(module.stride if module.stride is not None else k)[0]
            p = as_pair(module.padding)[0]
            d = as_pair(getattr(module, "dilation", 1))[0]
            size += d * (k - 1) * stride
            offset -= p * stride
            stride *= s
    return size, stride, offset


@dataclass
class _Record:
    """What the backward pass needs from one module's forward: input size, switches or input."""

    input_size: torch.Size
    indices: torch.Tensor | None = None
    inputs: torch.Tensor | None = None


class Deconvnet:
    """Projects single activations of a conv trunk down to pixel space (paper, section 2.1).

    The trunk is an ``nn.Sequential`` of Conv2d, ReLU, MaxPool2d and LocalResponseNorm (ZFNet's
    ``features``, the AlexNet-style baseline, torchvision's ``alexnet().features`` or
    ``vgg11().features``). Weights are read at projection time, so one instance follows training.

    Args:
        trunk: the convolutional trunk; it is only read, never changed.
        lrn: ``"identity"`` (default) passes the signal through LocalResponseNorm unchanged, as
            the paper's deconvnet has no inverse for it; ``"gradient"`` applies LRN's true
            gradient at the recorded input instead.

    Other modules (Dropout, BatchNorm, Identity...) pass the signal through their true gradient,
    so the trunk should be in eval mode. Projection runs in the trunk's parameter dtype with
    autocast off and does not need gradients enabled.
    """

    def __init__(self, trunk: nn.Sequential, lrn: str = "identity") -> None:
        if lrn not in LRN_MODES:
            raise ValueError(f"lrn must be one of {', '.join(LRN_MODES)}; got {lrn!r}")
        self.trunk = trunk
        self.lrn = lrn

    def project(
        self,
        images: torch.Tensor,
        layer: str,
        channels: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, 3, H, W) projections: for image i, activation (channels[i], positions[i]) of ``layer``.

        ``positions`` are flat indices into the layer's (h, w) map; by default each image's
        strongest position of its channel. The seed is the activation's own value.
        """
        end = resolve_layer(self.trunk, layer)
        modules = list(self.trunk._modules.values())[: end + 1]
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            param = next(self.trunk.parameters(), None)
            x = images.to(param.dtype if param is not None else torch.float32)
            records = []
            for module in modules:
                record = _Record(x.shape)
                if isinstance(module, nn.MaxPool2d):
                    x, record.indices = F.max_pool2d(
                        x,
                        module.kernel_size,
                        module.stride,
                        module.padding,
                        module.dilation,
                        ceil_mode=module.ceil_mode,
                        return_indices=True,
                    )
                elif isinstance(module, nn.ReLU):
                    x = F.relu(x)
                else:
                    if self._needs_input(module):
                        record.inputs = x
                    x = module(x)
                records.append(record)
            grad = self._seed(x, channels, positions)
            for module, record in zip(reversed(modules), reversed(records)):
                grad = self._backward(module, record, grad)
        return grad

    # ---- internals ---------------------------------------------------------------------------
    def _needs_input(self, module: nn.Module) -> bool:
        if isinstance(module, nn.Conv2d):
            return isinstance(module.padding, str) or module.padding_mode != "zeros"
        return not isinstance(module, nn.LocalResponseNorm) or self.lrn == "gradient"

    @staticmethod
    def _seed(
        act: torch.Tensor, channels: torch.Tensor, positions: torch.Tensor | None
    ) -> torch.Tensor:
        n, c = act.shape[:2]
        channels = torch.as_tensor(channels, device=act.device).long().reshape(-1)
        if channels.numel() != n:
            raise ValueError(f"need one channel per image: {n} images, {channels.numel()} channels")
        if channels.numel() and (int(channels.min()) < 0 or int(channels.max()) >= c):
            raise ValueError(f"channels must lie in [0, {c}); got {channels.tolist()}")
        rows = torch.arange(n, device=act.device)
        maps = act.flatten(2)[rows, channels]
        if positions is None:
            positions = maps.argmax(dim=1)
        positions = torch.as_tensor(positions, device=act.device).long().reshape(-1)
        seed = torch.zeros_like(act).flatten(1)
        flat = channels * maps.shape[1] + positions
        seed[rows, flat] = maps[rows, positions]
        return seed.view_as(act)

    def _backward(self, module: nn.Module, record: _Record, grad: torch.Tensor) -> torch.Tensor:
        if isinstance(module, nn.ReLU):
            return F.relu(grad)
        if isinstance(module, nn.MaxPool2d):
            return unpool_sum(grad, record.indices, record.input_size)
        if isinstance(module, nn.Conv2d) and record.inputs is None:
            return transposed_conv(module, grad, record.input_size)
        if isinstance(module, nn.LocalResponseNorm) and self.lrn == "identity":
            return grad
        with torch.enable_grad():
            x = record.inputs.detach().requires_grad_(True)
            (out,) = torch.autograd.grad(module(x), x, grad)
        return out


def unpool_sum(grad: torch.Tensor, indices: torch.Tensor, input_size: torch.Size) -> torch.Tensor:
    """Undo a max-pool: send each value to its switch, *adding* where windows share one.

    This is the transpose of max-pooling (and autograd's backward of it); ``nn.MaxUnpool2d``
    would keep only one of the colliding values.
    """
    n, c, h, w = input_size
    out = grad.new_zeros(n, c, h * w)
    out.scatter_add_(2, indices.flatten(2), grad.flatten(2))
    return out.view(n, c, h, w)


def transposed_conv(conv: nn.Conv2d, grad: torch.Tensor, input_size: torch.Size) -> torch.Tensor:
    """Filter with the transposed (flipped) filters of ``conv``, no bias, back to ``input_size``.

    The output padding resolves the sizes a strided conv makes ambiguous (224 -> 110 -> 224 for
    7x7/2 pad 1, where the bare transpose would give 223).
    """
    out_padding = []
    for axis in (0, 1):
        k, s = as_pair(conv.kernel_size)[axis], as_pair(conv.stride)[axis]
        p, d = as_pair(conv.padding)[axis], as_pair(conv.dilation)[axis]
        bare = (grad.shape[2 + axis] - 1) * s - 2 * p + d * (k - 1) + 1
        out_padding.append(input_size[2 + axis] - bare)
    return F.conv_transpose2d(
        grad,
        conv.weight,
        None,
        conv.stride,
        conv.padding,
        tuple(out_padding),
        conv.groups,
        conv.dilation,
    )
