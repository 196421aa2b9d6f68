"""Fused Triton max pool for square windows (ZFNet's overlapping 3x3/2), used on CUDA in eager mode.

The forward saves one uint8 offset per window (``ky*k + kx`` of the chosen input, PyTorch's tie
rule: the first maximum in row-major order, NaN wins) instead of int64 indices. The backward
gathers each input's gradient from the (at most ``ceil(k/s)^2``) windows that cover it, so it
needs no atomics and is deterministic. Runs on CPU tensors under ``TRITON_INTERPRET=1`` for tests.
"""

from __future__ import annotations

import torch

from zflight.models.triton_kernels import BLOCK as BLOCK_SIZE
from zflight.models.triton_kernels import _dense, _grid, triton

if triton is not None:
    import triton.language as tl

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
        BLOCK=BLOCK_SIZE,
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
        BLOCK=BLOCK_SIZE,
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
