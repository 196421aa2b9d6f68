"""Fused Triton kernels for ZFNet's LRN and overlapping max pools, used on CUDA in eager mode.

Each op is one kernel forward and one backward, fp32 arithmetic, any memory format (NCHW or
channels_last). The LRN saves only its input and recomputes the denominators in the backward; the
max pool saves one uint8 offset per window and gathers the input gradient from the (at most
``ceil(k/s)^2``) windows that cover each input, so it needs no atomics and is deterministic.
They also run on CPU tensors under ``TRITON_INTERPRET=1``, which is how the tests check them.
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

    @triton.jit
    def _decode(idx, C, H, W, CHANNELS_LAST: tl.constexpr):
        """(n, c, h, w) of a linear index taken in memory order, so neighbouring lanes coalesce."""
        if CHANNELS_LAST:
            c = idx % C
            t = idx // C
            w = t % W
            t = t // W
            h = t % H
            n = t // H
        else:
            w = idx % W
            t = idx // W
            h = t % H
            t = t // H
            c = t % C
            n = t // C
        return n, c, h, w

    @triton.jit
    def _pool_fwd_kernel(
        x_ptr,
        y_ptr,
        arg_ptr,
        total,
        C,
        H,
        W,
        OH,
        OW,
        xs0,
        xs1,
        xs2,
        xs3,
        ys0,
        ys1,
        ys2,
        ys3,
        K: tl.constexpr,
        S: tl.constexpr,
        P: tl.constexpr,
        CHANNELS_LAST: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = idx < total
        n, c, oh, ow = _decode(idx, C, OH, OW, CHANNELS_LAST)
        h0 = oh * S - P
        w0 = ow * S - P
        arg = tl.maximum(-h0, 0) * K + tl.maximum(-w0, 0)
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        base = n * xs0 + c * xs1
        for ky in tl.static_range(K):
            for kx in tl.static_range(K):
                h = h0 + ky
                w = w0 + kx
                ok = live & (h >= 0) & (h < H) & (w >= 0) & (w < W)
                v = tl.load(x_ptr + base + h * xs2 + w * xs3, mask=ok, other=float("-inf"))
                v = v.to(tl.float32)
                take = ok & ((v > best) | (v != v))
                best = tl.where(take, v, best)
                arg = tl.where(take, ky * K + kx, arg)
        out = n * ys0 + c * ys1 + oh * ys2 + ow * ys3
        tl.store(y_ptr + out, best.to(y_ptr.dtype.element_ty), mask=live)
        tl.store(arg_ptr + out, arg.to(tl.uint8), mask=live)

    @triton.jit
    def _pool_bwd_kernel(
        g_ptr,
        arg_ptr,
        gx_ptr,
        total,
        C,
        H,
        W,
        OH,
        OW,
        gs0,
        gs1,
        gs2,
        gs3,
        as0,
        as1,
        as2,
        as3,
        xs0,
        xs1,
        xs2,
        xs3,
        K: tl.constexpr,
        S: tl.constexpr,
        P: tl.constexpr,
        COVER: tl.constexpr,
        CHANNELS_LAST: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = idx < total
        n, c, h, w = _decode(idx, C, H, W, CHANNELS_LAST)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.static_range(COVER):
            oh = (h + P) // S - i
            ky = h + P - oh * S
            okh = live & (oh >= 0) & (oh < OH) & (ky < K)
            for j in tl.static_range(COVER):
                ow = (w + P) // S - j
                kx = w + P - ow * S
                ok = okh & (ow >= 0) & (ow < OW) & (kx < K)
                a = tl.load(arg_ptr + n * as0 + c * as1 + oh * as2 + ow * as3, mask=ok, other=255)
                gv = tl.load(g_ptr + n * gs0 + c * gs1 + oh * gs2 + ow * gs3, mask=ok, other=0.0)
                acc += tl.where(ok & (a.to(tl.int32) == ky * K + kx), gv.to(tl.float32), 0.0)
        out = n * xs0 + c * xs1 + h * xs2 + w * xs3
        tl.store(gx_ptr + out, acc.to(gx_ptr.dtype.element_ty), mask=live)


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


def max_pool_forward(
    x: torch.Tensor, kernel: int, stride: int, padding: int, out_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max pool values and uint8 window offsets (``ky*kernel + kx``), PyTorch's tie rule."""
    x, channels_last = _dense(x)
    n, c, h, w = x.shape
    oh, ow = out_size
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=fmt)
    arg = torch.empty_like(y, dtype=torch.uint8)
    _pool_fwd_kernel[_grid(y.numel())](
        x,
        y,
        arg,
        y.numel(),
        c,
        h,
        w,
        oh,
        ow,
        *x.stride(),
        *y.stride(),
        K=kernel,
        S=stride,
        P=padding,
        CHANNELS_LAST=channels_last,
        BLOCK=BLOCK,
    )
    return y, arg


def max_pool_backward(
    g: torch.Tensor,
    arg: torch.Tensor,
    shape: torch.Size,
    kernel: int,
    stride: int,
    padding: int,
    channels_last: bool,
) -> torch.Tensor:
    """Input gradient: each input sums the gradients of the windows whose offset points at it."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gx = torch.empty(shape, dtype=g.dtype, device=g.device, memory_format=fmt)
    n, c, h, w = shape
    cover = -(-kernel // stride)
    _pool_bwd_kernel[_grid(gx.numel())](
        g,
        arg,
        gx,
        gx.numel(),
        c,
        h,
        w,
        g.shape[2],
        g.shape[3],
        *g.stride(),
        *arg.stride(),
        *gx.stride(),
        K=kernel,
        S=stride,
        P=padding,
        COVER=cover,
        CHANNELS_LAST=channels_last,
        BLOCK=BLOCK,
    )
    return gx


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: torch.Tensor, kernel: int, stride: int, padding: int, out_size: tuple[int, int]
    ):
        y, arg = max_pool_forward(x, kernel, stride, padding, out_size)
        ctx.save_for_backward(arg)
        ctx.args = (x.shape, kernel, stride, padding, _dense(x)[1])
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (arg,) = ctx.saved_tensors
        return max_pool_backward(g, arg, *ctx.args), None, None, None, None


def max_pool(
    x: torch.Tensor, kernel: int, stride: int, padding: int, out_size: tuple[int, int]
) -> torch.Tensor:
    """Differentiable fused square max pool with output side ``out_size`` (``pool_output_size``)."""
    return _MaxPool.apply(x, kernel, stride, padding, out_size)
