"""Fused Triton kernels for ZFNet's LRN (used on CUDA in eager mode), and what they share with
the max-pool kernels in ``triton_pool``.

One kernel forward and one backward, fp32 arithmetic, NCHW or channels_last. The LRN saves only
its input and recomputes the denominators in the backward. The kernels also run on CPU tensors
under ``TRITON_INTERPRET=1``, which is how the tests check them.
"""

from __future__ import annotations

import functools

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the plain tensor path in fast_ops serves instead
    triton = None

BLOCK = 1024


@functools.cache
def available() -> bool:
    """True when triton imports and a CUDA device exists."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _lrn_fwd_kernel(
        x_ptr,
        y_ptr,
        total,
        channels,
        cstride,
        alpha_n,
        beta,
        k,
        SIZE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < total
        c = (offs // cstride) % channels
        x = tl.load(x_ptr + offs, mask=live, other=0.0).to(tl.float32)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(SIZE):
            d = j - SIZE // 2
            ok = live & (c + d >= 0) & (c + d < channels)
            v = tl.load(x_ptr + offs + d * cstride, mask=ok, other=0.0).to(tl.float32)
            acc += v * v
        div = k + alpha_n * acc
        y = x * tl.exp2(-beta * tl.log2(div))
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=live)

    @triton.jit
    def _lrn_bwd_kernel(
        x_ptr,
        g_ptr,
        gx_ptr,
        total,
        channels,
        cstride,
        alpha_n,
        beta,
        k,
        SIZE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # gx_i = g_i D_i^-b - 2 a b x_i sum_{c: i in W(c)} g_c x_c D_c^(-b-1), D_c = k + a sum_W(c) x^2
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < total
        c = (offs // cstride) % channels
        x = tl.load(x_ptr + offs, mask=live, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=live, other=0.0).to(tl.float32)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        center = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(SIZE):
            dj = j - (SIZE - 1) // 2
            okj = live & (c + dj >= 0) & (c + dj < channels)
            sq = tl.zeros([BLOCK], dtype=tl.float32)
            for i in tl.static_range(SIZE):
                di = dj + i - SIZE // 2
                oki = okj & (c + di >= 0) & (c + di < channels)
                v = tl.load(x_ptr + offs + di * cstride, mask=oki, other=0.0).to(tl.float32)
                sq += v * v
            div = k + alpha_n * sq
            powed = tl.exp2(-beta * tl.log2(div))
            xj = tl.load(x_ptr + offs + dj * cstride, mask=okj, other=0.0).to(tl.float32)
            gj = tl.load(g_ptr + offs + dj * cstride, mask=okj, other=0.0).to(tl.float32)
            acc += gj * xj * powed / div
            if dj == 0:
                center = powed
        gx = g * center - 2.0 * alpha_n * beta * x * acc
        tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=live)


def _dense(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``x`` in NCHW or channels_last contiguous form, and whether it is channels_last."""
    if x.is_contiguous():
        return x, False
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, True
    return x.contiguous(), False


def _grid(total: int) -> tuple[int]:
    return (triton.cdiv(total, BLOCK),)


def lrn_forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """LRN forward of a dense 4-D tensor (see ``_dense``), output in the same memory format."""
    cstride = 1 if _dense(x)[1] else x.shape[2] * x.shape[3]
    y = torch.empty_like(x)
    _lrn_fwd_kernel[_grid(x.numel())](
        x, y, x.numel(), x.shape[1], cstride, alpha / size, beta, k, SIZE=size, BLOCK=BLOCK
    )
    return y


def lrn_backward(
    x: torch.Tensor, g: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> torch.Tensor:
    """LRN input gradient; ``g`` is brought to ``x``'s memory format first."""
    channels_last = _dense(x)[1]
    g = g.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    cstride = 1 if channels_last else x.shape[2] * x.shape[3]
    gx = torch.empty_like(x)
    _lrn_bwd_kernel[_grid(x.numel())](
        x, g, gx, x.numel(), x.shape[1], cstride, alpha / size, beta, k, SIZE=size, BLOCK=BLOCK
    )
    return gx


class _LRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float):
        x = _dense(x)[0]
        ctx.save_for_backward(x)
        ctx.args = (size, alpha, beta, k)
        return lrn_forward(x, size, alpha, beta, k)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        return lrn_backward(x, g, *ctx.args), None, None, None, None


def lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Differentiable fused LRN of a 4-D tensor, ``nn.LocalResponseNorm(size, alpha, beta, k)``."""
    return _LRN.apply(x, size, alpha, beta, k)
