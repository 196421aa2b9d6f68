"""Exact incremental inference for occlusion (after Nakandala et al., SIGMOD 2019, "Krypton").

An occluder changes only a small window of each early layer's output. The unoccluded
activations are computed once; per occluder position only the window each layer's receptive
field makes dirty is recomputed, batched across positions, and pasted into the unoccluded
activations where a later layer reads them. The result equals a full re-run of the occluded
image up to float rounding.

Every window of one layer has the same size for every position (the largest the occluder can
dirty, shifted inward at the borders), so a batch of positions is one tensor. Windows are kept
channels-last (J, h, w, C): cutting the regions a layer reads out of the unoccluded map, and
writing the recomputed windows into them, are then single indexing ops on strided views that
move whole rows of ``w * C`` values, with no per-element index arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Modules that act on each spatial position separately (LRN mixes channels only).
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh)
POINTWISE: tuple[type[nn.Module], ...] = (*_ACTIVATIONS, nn.Identity, nn.LocalResponseNorm)
_EVAL_POINTWISE: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Dropout2d, nn.BatchNorm2d)


def as_pair(v: int | Sequence[int]) -> tuple[int, int]:
    """``(v, v)`` for an int, else the first two entries (kernel sizes, strides, paddings)."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def layer_kind(module: nn.Module) -> str:
    """``"local"`` (Conv2d, MaxPool2d), ``"pointwise"`` or ``"other"`` (recomputed in full).

    Exact types only, so a subclass with its own ``forward`` is never mistaken for its parent;
    a module class can declare ``spatially_pointwise = True`` to join the pointwise set.
    Dropout and BatchNorm count as pointwise in eval mode only.
    """
    kind = type(module)
    if kind is nn.Conv2d:
        ok = module.padding_mode == "zeros" and not isinstance(module.padding, str)
        return "local" if ok else "other"
    if kind is nn.MaxPool2d:
        return "other" if module.return_indices else "local"
    if kind in POINTWISE or getattr(module, "spatially_pointwise", False):
        return "pointwise"
    if kind in _EVAL_POINTWISE and not module.training:
        if kind is nn.BatchNorm2d and module.running_mean is None:
            return "other"
        return "pointwise"
    return "other"


@dataclass(frozen=True)
class _Axis:
    """One axis of a local layer: effective kernel extent, stride, padding, input/output length."""

    extent: int
    stride: int
    pad: int
    length_in: int
    length_out: int

    def window(self, size_in: int) -> int:
        """Output window size that covers every output a dirty input window of ``size_in`` touches."""
        span = max(
            (r + size_in - 1 + self.pad) // self.stride
            - _ceil_div(r + self.pad - self.extent + 1, self.stride)
            + 1
            for r in range(self.stride)
        )
        return max(1, min(self.length_out, span))

    def start(self, start_in: Tensor | int, size_out: int) -> Tensor | int:
        """First output of the window for dirty input windows starting at ``start_in``."""
        first = (start_in + self.pad - self.extent + self.stride) // self.stride
        if isinstance(first, int):
            return min(max(first, 0), self.length_out - size_out)
        return first.clamp(0, self.length_out - size_out)

    def region(self, size_out: int) -> int:
        """Input extent (padded coordinates) that ``size_out`` outputs read."""
        return (size_out - 1) * self.stride + self.extent

    def margins(self, size_in: int, size_out: int) -> tuple[int, int]:
        """How far a dirty input window can stick out of the region its output window reads,
        before and after (at borders, or where a stride skips the last inputs)."""
        before = after = 0
        for start_in in range(self.length_in - size_in + 1):
            first = self.start(start_in, size_out) * self.stride - self.pad
            before = max(before, first - start_in)
            after = max(after, start_in + size_in - first - self.region(size_out))
        return before, after

    def pad_after(self) -> int:
        """Padding after the input that the last output window reads (ceil mode may need more)."""
        return max(0, (self.length_out - 1) * self.stride + self.extent - self.pad - self.length_in)


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


@dataclass
class _Step:
    """How one trunk layer runs: ``"window"``, ``"pointwise"`` or ``"full"`` (from here on)."""

    module: nn.Module
    mode: str
    axes: tuple[_Axis, _Axis] | None = None
    size_out: tuple[int, int] = (0, 0)
    margins: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    elements: int = 0


def windows(src: Tensor, n: Tensor, top: Tensor, left: Tensor, height: int, width: int) -> Tensor:
    """(J, height, width, C) windows of channels-last ``src`` (N, H, W, C), one per row of
    (n, top, left), cut with a single index into a strided view of all windows."""
    _, h, w, c = src.shape
    view = src.contiguous().as_strided(
        (src.shape[0], h - height + 1, w - width + 1, height, width * c),
        (h * w * c, w * c, c, w * c, 1),
    )
    return view[n, top, left].view(-1, height, width, c)


def paste(buffer: Tensor, window: Tensor, top: Tensor, left: Tensor) -> None:
    """Write ``window[j]`` (J, h, w, C) into ``buffer[j]`` (J, H, W, C) at (top[j], left[j]), in place."""
    j, h, w, c = buffer.shape
    wh, ww = window.shape[1:3]
    view = buffer.as_strided(
        (j, h - wh + 1, w - ww + 1, wh, ww * c), (h * w * c, w * c, c, w * c, 1)
    )
    view[torch.arange(j, device=buffer.device), top, left] = window.reshape(j, wh, ww * c).to(
        buffer.dtype
    )


def _nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


def _apply_local(module: nn.Module, x: Tensor) -> Tensor:
    if isinstance(module, nn.Conv2d):
        return F.conv2d(
            x, module.weight, module.bias, module.stride, 0, module.dilation, module.groups
        )
    return F.max_pool2d(x, module.kernel_size, module.stride, 0, module.dilation, False)


class IncrementalTrunk:
    """Occluded forward passes through a sequential trunk, recomputing only dirty windows.

    Args:
        trunk: the layers, run in order (an ``nn.Sequential``'s children).
        full_fraction: once a layer's output window would cover this share of its map, that
            layer and all later ones run in full on the patched activations (cheaper than
            cutting windows that are nearly the whole map).

    Use: ``prepare(images)`` once (the unoccluded pass), ``plan(window_size)`` once per occluder
    size, then ``run`` on batches of positions. Layers of unknown type run in full from there on.
    """

    def __init__(self, trunk: Sequence[nn.Module], full_fraction: float = 0.5) -> None:
        self.modules = list(trunk)
        self.full_fraction = full_fraction
        self.inputs: list[Tensor] = []
        self._maps: dict[tuple[int, ...], Tensor] = {}

    def prepare(self, images: Tensor) -> Tensor:
        """Run the unoccluded images; keep every layer's input. Returns the trunk's output."""
        x = images
        self.inputs, self._maps = [], {}
        for module in self.modules:
            self.inputs.append(x)
            x = module(x)
        self.inputs.append(x)
        return x

    def plan(self, window: tuple[int, int]) -> list[_Step]:
        """How each layer runs for an input window of ``window`` (height, width) pixels."""
        steps, size, full = [], window, False
        for i, module in enumerate(self.modules):
            cin, cout = self.inputs[i].shape[1], self.inputs[i + 1].shape[1]
            hin, win = self.inputs[i].shape[2:]
            hout, wout = self.inputs[i + 1].shape[2:]
            kind = layer_kind(module)
            if kind == "local" and not full:
                axes = self._axes(module, i)
                out = (axes[0].window(size[0]), axes[1].window(size[1]))
                full = out[0] * out[1] >= self.full_fraction * hout * wout
                if not full:
                    margins = (axes[0].margins(size[0], out[0]), axes[1].margins(size[1], out[1]))
                    region = [a.region(o) + sum(m) for a, o, m in zip(axes, out, margins)]
                    elements = region[0] * region[1] * cin + out[0] * out[1] * cout
                    steps.append(_Step(module, "window", axes, out, margins, elements))
                    size = out
                    continue
            if kind == "pointwise" and not full:
                steps.append(
                    _Step(module, "pointwise", size_out=size, elements=2 * size[0] * size[1] * cin)
                )
                continue
            full = True
            steps.append(
                _Step(
                    module,
                    "full",
                    size_out=(hout, wout),
                    elements=2 * hin * win * cin + hout * wout * cout,
                )
            )
        return steps

    def _axes(self, module: nn.Module, i: int) -> tuple[_Axis, _Axis]:
        k, s = as_pair(module.kernel_size), as_pair(module.stride)
        p, d = as_pair(module.padding), as_pair(module.dilation)
        shape_in, shape_out = self.inputs[i].shape[2:], self.inputs[i + 1].shape[2:]
        return tuple(
            _Axis(d[a] * (k[a] - 1) + 1, s[a], p[a], shape_in[a], shape_out[a]) for a in (0, 1)
        )

    def _map(self, i: int, step: _Step | None = None) -> Tensor:
        """Layer ``i``'s unoccluded input, channels-last, padded as ``step`` reads it (module
        padding plus the margins windows may stick out by)."""
        pads = (0, 0, 0, 0)
        if step is not None:
            (ay, ax), ((mt, mb), (ml, mr)) = step.axes, step.margins
            pads = (ax.pad + ml, ax.pad_after() + mr, ay.pad + mt, ay.pad_after() + mb)
        key = (i, *pads)
        if key not in self._maps:
            value = (
                float("-inf") if isinstance(getattr(step, "module", None), nn.MaxPool2d) else 0.0
            )
            x = F.pad(self.inputs[i], pads, value=value) if any(pads) else self.inputs[i]
            self._maps[key] = _nhwc(x).contiguous()
        return self._maps[key]

    def run(
        self,
        steps: list[_Step],
        n: Tensor,
        top: Tensor,
        left: Tensor,
        window: Tensor,
        tap: int | None = None,
        channel: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Trunk outputs (J, C, H, W) for images ``n`` (J,) with ``window`` (J, h, w, C) pasted at
        (top, left); and, if ``tap`` is given, the total of layer ``tap``'s output map ``channel[n]``.
        """
        ys, xs, total = top, left, None
        full: Tensor | None = None
        for i, step in enumerate(steps):
            if step.mode == "full":
                if full is None:
                    full = self._whole(i, n, window, ys, xs)
                full = step.module(full)
            elif step.mode == "pointwise":
                window = _nhwc(step.module(_nchw(window)))
            else:
                window, ys, xs = self._window(step, i, n, window, ys, xs)
            if i == tap:
                total = self._total(i + 1, n, channel[n], full, window, ys, xs)
        if full is None:
            full = self._whole(len(steps), n, window, ys, xs)
        return full, total

    def _whole(self, i: int, n: Tensor, window: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
        """Layer ``i``'s whole input (J, C, H, W) with the window pasted in."""
        buffer = self._map(i)[n]
        paste(buffer, window, ys, xs)
        return _nchw(buffer)

    def _window(
        self, step: _Step, i: int, n: Tensor, window: Tensor, ys: Tensor, xs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Recompute the output window of a local layer from the patched region it reads."""
        (ay, ax), ((mt, mb), (ml, mr)) = step.axes, step.margins
        oy, ox = ay.start(ys, step.size_out[0]), ax.start(xs, step.size_out[1])
        hr, wr = ay.region(step.size_out[0]), ax.region(step.size_out[1])
        # Rows of the padded map: region row 0 is map row oy * stride; the margins come first.
        buffer = windows(
            self._map(i, step), n, oy * ay.stride, ox * ax.stride, mt + hr + mb, ml + wr + mr
        )
        paste(buffer, window, ys + ay.pad + mt - oy * ay.stride, xs + ax.pad + ml - ox * ax.stride)
        region = buffer[:, mt : mt + hr, ml : ml + wr]
        return _nhwc(_apply_local(step.module, _nchw(region))), oy, ox

    def _total(
        self,
        i: int,
        n: Tensor,
        channel: Tensor,
        full: Tensor | None,
        window: Tensor,
        ys: Tensor,
        xs: Tensor,
    ) -> Tensor:
        """Total of map ``channel`` of layer ``i``'s input: unoccluded total, window swapped."""
        rows = torch.arange(n.numel(), device=n.device)
        if full is not None:
            return full[rows, channel].float().sum((1, 2))
        h, w = window.shape[1:3]
        base = self.inputs[i]
        yy = (ys[:, None] + torch.arange(h, device=n.device))[:, :, None]
        xx = (xs[:, None] + torch.arange(w, device=n.device))[:, None, :]
        before = base[n[:, None, None], channel[:, None, None], yy, xx].float().sum((1, 2))
        after = window[rows, :, :, channel].float().sum((1, 2))
        return base[n, channel].float().sum((1, 2)) - before + after
