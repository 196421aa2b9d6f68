"""What an analysis costs in the unit that matters for a training run: forward passes of the model.

``CountFlops`` is a dispatch mode that adds up the floating-point operations of every matrix
product and convolution run inside it, forward and backward alike, however they are called (module,
functional op, autograd), with PyTorch's own formulas (``torch.utils.flop_counter.flop_registry``).
Dividing by ``forward_flops`` (one image's forward pass at the same size) gives forward-pass
equivalents. Element-wise work, pooling, sorting and drawing have no FLOPs here: seconds count them.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

# Queries of tensor metadata never do arithmetic; PyTorch's FlopCounterMode skips them the same way.
_METADATA = {
    torch.ops.aten.is_contiguous.default,
    torch.ops.aten.is_contiguous.memory_format,
    torch.ops.aten.is_strides_like_format.default,
    torch.ops.aten.is_non_overlapping_and_dense.default,
    torch.ops.aten.size.default,
    torch.ops.aten.sym_size.default,
    torch.ops.aten.stride.default,
    torch.ops.aten.sym_stride.default,
    torch.ops.aten.storage_offset.default,
    torch.ops.aten.sym_storage_offset.default,
    torch.ops.aten.numel.default,
    torch.ops.aten.sym_numel.default,
    torch.ops.aten.dim.default,
    torch.ops.prim.layout.default,
}


class CountFlops(TorchDispatchMode):
    """``with CountFlops() as c: ...`` then ``c.flops``: the matmul and convolution FLOPs run inside.

    Unlike ``torch.utils.flop_counter.FlopCounterMode`` it tracks no modules, so it installs no
    module hooks (those break ``torch.autograd.grad`` on leaf inputs, which saliency and activation
    maximisation use) and costs one Python call per operator.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA:
            return NotImplemented
        packet = func._overloadpacket
        if packet not in flop_registry and _composite(func):
            with self:  # linear, conv2d, matmul...: counted as the ops they are made of
                out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
        out = func(*args, **kwargs)
        if packet in flop_registry:
            self.flops += int(flop_registry[packet](*args, **kwargs, out_val=out))
        return out


_COMPOSITE: dict[Any, bool] = {}


def _composite(func: Any) -> bool:
    """Whether ``func`` is defined by other ATen ops (reaches a dispatch mode undecomposed when no
    gradient is recorded, as ``conv2d`` and ``linear`` do under ``no_grad``)."""
    if func not in _COMPOSITE:
        _COMPOSITE[func] = torch._C._dispatch_has_kernel_for_dispatch_key(
            func.name(), "CompositeImplicitAutograd"
        )
    return _COMPOSITE[func]


def forward_flops(model: nn.Module, image_shape: tuple[int, ...], device: Any = "cpu") -> int:
    """FLOPs of one forward pass of ``model`` on one image of ``image_shape`` (C, H, W).

    The model's forward hooks are set aside meanwhile: this pass is a measurement, and hooks that
    stream over validation batches must not see it.
    """
    x = torch.zeros(1, *image_shape, device=device)
    with torch.no_grad(), without_hooks(model), CountFlops() as counter:
        model(x)
    return counter.flops


@contextlib.contextmanager
def without_hooks(model: nn.Module) -> Iterator[None]:
    """Every module's forward hooks and pre-hooks set aside inside, put back afterwards."""
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.modules()]
    for m, _, _ in saved:
        m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
    try:
        yield
    finally:
        for m, hooks, pre_hooks in saved:
            m._forward_hooks, m._forward_pre_hooks = hooks, pre_hooks


def training_forwards(images: int, backward_factor: float = 2.0) -> float:
    """Forward-pass equivalents of training on ``images`` images: one forward plus a backward that
    costs ``backward_factor`` forwards (2: the gradients of the inputs and of the weights, each
    about one forward's matrix products)."""
    return images * (1.0 + backward_factor)
