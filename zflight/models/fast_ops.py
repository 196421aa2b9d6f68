"""Exact, faster drop-ins for ZFNet's local response norm and overlapping 3x3/2 max pools.

Both compute what ``nn.LocalResponseNorm`` and ``nn.MaxPool2d`` compute (forward and backward,
max-pool ties routed to the single first argmax like PyTorch) and subclass them, so code that walks
a trunk by module type (the deconvnet) still sees standard modules. The path is chosen per call:

- CUDA, eager, triton importable: fused Triton kernels (``triton_kernels``, ``triton_pool``).
- otherwise the LRN is a plain elementwise-and-shifted-slices formula, which Inductor fuses under
  ``torch.compile``, and in eager mode gets a closed-form backward (2-4x faster than
  ``avg_pool3d`` on a CPU); the pool is PyTorch's own.

Configs name them: ``model.lrn=fast``, ``model.pool=fast`` (see ``LRN_IMPLS``, ``POOL_IMPLS``).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from zflight.models import triton_kernels, triton_pool


def window_sum(x: torch.Tensor, size: int, transpose: bool = False) -> torch.Tensor:
    """Sum over the channel window ``[c - size//2, c + (size-1)//2]`` (zero outside), as LRN uses.

    ``transpose=True`` sums over the mirrored window ``[c - (size-1)//2, c + size//2]``: the
    adjoint, which the LRN gradient needs (the same window when ``size`` is odd).
    """
    before, after = size // 2, (size - 1) // 2
    if transpose:
        before, after = after, before
    channels = x.shape[1]
    total = x.clone()
    for d in range(1, min(before, channels - 1) + 1):
        total[:, d:] += x[:, : channels - d]
    for d in range(1, min(after, channels - 1) + 1):
        total[:, : channels - d] += x[:, d:]
    return total


def lrn_torch(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """``x / (k + alpha/size * window_sum(x^2))^beta`` as elementwise ops and shifted slices.

    The same definition as ``F.local_response_norm`` without its 5-D ``avg_pool3d``; autograd
    differentiates it exactly and Inductor fuses it (channels_last or not).
    """
    if x.dim() != 4:
        return F.local_response_norm(x, size, alpha, beta, k)
    div = window_sum(x * x, size) * (alpha / size) + k
    return x * div.pow(-beta)


class _LRNFunction(torch.autograd.Function):
    """``lrn_torch`` with its gradient in closed form: three saved tensors, a dozen kernels.

    ``gx = g d^-b - (2 a b / n) x window_sum^T(g x d^-b / d)`` with ``d = k + a/n window_sum(x^2)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float):
        div = window_sum(x * x, size).mul_(alpha / size).add_(k)
        scale = div.pow(-beta)
        ctx.save_for_backward(x, div, scale)
        ctx.args = (size, alpha, beta)
        return x * scale

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, div, scale = ctx.saved_tensors
        size, alpha, beta = ctx.args
        spread = window_sum(g * x * scale / div, size, transpose=True)
        return g * scale - (2 * alpha * beta / size) * x * spread, None, None, None, None


class FastLRN(nn.LocalResponseNorm):
    """``nn.LocalResponseNorm`` with the same constructor and result, computed without avg_pool3d.

    On CUDA in eager mode it runs a fused Triton kernel (forward and backward, fp32 arithmetic,
    nothing saved but the input); under torch.compile ``lrn_torch`` for Inductor to fuse;
    otherwise the same formula with a closed-form backward (no double backward).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        if _use_triton(x):
            return triton_kernels.lrn(x, self.size, self.alpha, self.beta, self.k)
        if torch.compiler.is_compiling():
            return lrn_torch(x, self.size, self.alpha, self.beta, self.k)
        return _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output side of a max pool, with PyTorch's rule that the last window starts inside the input."""
    span = size + 2 * padding - kernel
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


class FastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with the same constructor and result and a cheaper backward on CUDA.

    In CUDA eager mode it saves one uint8 offset per window instead of int64 indices and gathers
    the input gradient in one Triton kernel. Elsewhere it is PyTorch's pool: under torch.compile
    Inductor already lowers it to the same offsets-and-gather scheme, and the CPU kernels are fast.
    Dilation, ``return_indices`` and kernels over 16x16 always use PyTorch's pool.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        geometry = _square(self.kernel_size, self.stride, self.padding, self.dilation)
        if x.dim() != 4 or geometry is None or self.return_indices or not _use_triton(x):
            return super().forward(x)
        kernel, stride, padding = geometry
        out = tuple(
            pool_output_size(n, kernel, stride, padding, self.ceil_mode) for n in x.shape[2:]
        )
        return triton_pool.max_pool(x, kernel, stride, padding, out)


def _square(kernel, stride, padding, dilation) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) when all are square and undilated and the kernel fits uint8."""
    vals = []
    for v in (kernel, stride, padding, dilation):
        pair = (v, v) if isinstance(v, int) else tuple(v)
        if pair[0] != pair[1]:
            return None
        vals.append(int(pair[0]))
    k, s, p, d = vals
    return (k, s, p) if d == 1 and k <= 16 else None


def _use_triton(x: torch.Tensor) -> bool:
    """Triton kernels serve CUDA in eager mode; under torch.compile Inductor fuses the plain path."""
    return (
        not torch.compiler.is_compiling()
        and x.is_cuda
        and triton_kernels.available()
        and triton_works(x.device, x.dtype, x.is_contiguous(memory_format=torch.channels_last))
    )


_TRITON_CHECKED: dict[tuple, bool] = {}


def triton_works(device: torch.device, dtype: torch.dtype, channels_last: bool) -> bool:
    """Whether the Triton kernels build and agree with PyTorch here, checked once per (device,
    dtype, layout) on a small input, forward and backward. A machine where Triton cannot build
    its kernels (no C compiler for its launcher, an unsupported GPU) gets one warning and
    PyTorch's ops instead of a crash at the first training step."""
    key = (str(device), dtype, channels_last)
    if key not in _TRITON_CHECKED:
        _TRITON_CHECKED[key] = _check_triton(device, dtype, channels_last)
    return _TRITON_CHECKED[key]


def _check_triton(device: torch.device, dtype: torch.dtype, channels_last: bool) -> bool:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    try:
        # first use may come inside validation (inference mode) or under autocast: step out
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(torch.device(device).type, enabled=False),
        ):
            x = torch.randn(2, 8, 9, 9, generator=g).to(device, dtype).contiguous(memory_format=fmt)
            results = []
            for fast, reference in (
                (
                    lambda t: triton_kernels.lrn(t, 5, 1e-4, 0.75, 2.0),
                    nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0),
                ),
                (lambda t: triton_pool.max_pool(t, 3, 2, 1, (5, 5)), nn.MaxPool2d(3, 2, 1)),
            ):
                pair = []
                for fn, t in ((fast, x), (reference, x.float())):  # the reference in fp32
                    t = t.detach().clone().requires_grad_()
                    out = fn(t)
                    out.float().square().sum().backward()
                    pair.append((out.float(), t.grad.float()))
                results.append(pair)
        tol = 3e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
        for (out, grad), (ref_out, ref_grad) in results:
            if not (
                torch.allclose(out, ref_out, rtol=tol, atol=tol)
                and torch.allclose(grad, ref_grad, rtol=tol, atol=tol)
            ):
                raise RuntimeError("results differ from PyTorch's")
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use the kernels
        warnings.warn(
            f"the Triton LRN/max-pool kernels do not work on {device} ({dtype}): {exc!r}; "
            f"using PyTorch's ops (model.lrn/model.pool=fast stay exact, only slower)",
            stacklevel=3,
        )
        return False


LRN_IMPLS: dict[str, type[nn.Module]] = {"torch": nn.LocalResponseNorm, "fast": FastLRN}
POOL_IMPLS: dict[str, type[nn.Module]] = {"torch": nn.MaxPool2d, "fast": FastMaxPool2d}


def use_fast_ops(model: nn.Module, lrn: str = "fast", pool: str = "fast") -> nn.Module:
    """Swap every plain ``nn.LocalResponseNorm`` / ``nn.MaxPool2d`` in ``model`` for the named
    implementation, same settings; in place, and returned. Works for any CNN, not only ZFNet."""
    lrn_cls, pool_cls = resolve_impl("lrn", lrn), resolve_impl("pool", pool)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.LocalResponseNorm and lrn_cls is not nn.LocalResponseNorm:
                setattr(parent, name, lrn_cls(child.size, child.alpha, child.beta, child.k))
            elif type(child) is nn.MaxPool2d and pool_cls is not nn.MaxPool2d:
                setattr(
                    parent,
                    name,
                    pool_cls(
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        child.dilation,
                        child.return_indices,
                        child.ceil_mode,
                    ),
                )
    return model


def resolve_impl(kind: str, name: str | type[nn.Module]) -> type[nn.Module]:
    """The module class for ``model.lrn`` / ``model.pool`` given by name (classes pass through)."""
    if not isinstance(name, str):
        return name
    table = {"lrn": LRN_IMPLS, "pool": POOL_IMPLS}[kind]
    if name not in table:
        raise KeyError(f"model.{kind}={name!r} is not an implementation; valid: {', '.join(table)}")
    return table[name]
