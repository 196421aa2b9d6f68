"""The fast LRN and max pool compute what PyTorch's modules compute, forward and backward.

The Triton kernels run on CPU tensors under ``TRITON_INTERPRET=1``: ``test_triton_kernels_interpreted``
re-runs this file's ``interp`` tests in a subprocess with that variable set.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zflight.models import ZFNet
from zflight.models import triton_kernels as tk
from zflight.models import triton_pool as tp
from zflight.models.fast_ops import (
    LRN_IMPLS,
    POOL_IMPLS,
    FastLRN,
    FastMaxPool2d,
    lrn_torch,
    pool_output_size,
    resolve_impl,
    use_fast_ops,
    window_sum,
)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interp = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 subprocess")
LAYOUTS = [torch.contiguous_format, torch.channels_last]


def _pair(shape, fmt, dtype=torch.float64, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=dtype) * scale).contiguous(memory_format=fmt)
    return x.clone().requires_grad_(), x.clone().requires_grad_()


def _fwd_bwd(fn, x, grad_seed=1):
    y = fn(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=y.dtype)
    y.backward(g)
    return y, x.grad


@pytest.mark.parametrize("channels", [6, 3, 1])
def test_window_sum_matches_explicit_loop(channels):
    x = torch.arange(2 * channels * 1 * 2, dtype=torch.float64).view(2, channels, 1, 2) ** 2
    for size in (1, 2, 3, 4, 5, 8):
        for transpose in (False, True):
            before, after = (size - 1) // 2, size // 2
            if not transpose:
                before, after = after, before
            expected = torch.zeros_like(x)
            for c in range(channels):
                for j in range(c - before, c + after + 1):
                    if 0 <= j < channels:
                        expected[:, c] += x[:, j]
            assert torch.equal(window_sum(x, size, transpose), expected)


@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("size", [5, 4])
def test_closed_form_lrn_gradient_equals_autograd(fmt, size):
    a, b = _pair((3, 7, 4, 3), fmt)
    ya, ga = _fwd_bwd(lambda x: FastLRN(size, 0.2, 0.75, 1.5)(x), a)
    yb, gb = _fwd_bwd(lambda x: F.local_response_norm(x, size, 0.2, 0.75, 1.5), b)
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: FastLRN(size, 0.2, 0.75, 1.5)(x), (a.detach()[:1, :, :2, :2].requires_grad_(),)
    )


@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize(
    "size,alpha,beta,k", [(5, 1e-2, 0.75, 2.0), (4, 0.3, 0.5, 1.0), (3, 1.0, 1.2, 0.5)]
)
def test_lrn_torch_equals_pytorch_forward_and_backward(fmt, size, alpha, beta, k):
    a, b = _pair((2, 9, 5, 4), fmt)
    ya, ga = _fwd_bwd(lambda x: lrn_torch(x, size, alpha, beta, k), a)
    yb, gb = _fwd_bwd(lambda x: F.local_response_norm(x, size, alpha, beta, k), b)
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)
    assert ya.is_contiguous(memory_format=fmt)


def test_fast_lrn_is_a_drop_in_module():
    fast, ref = FastLRN(5, alpha=1e-4, beta=0.75, k=2.0), nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)
    assert isinstance(fast, nn.LocalResponseNorm)
    assert fast.extra_repr() == ref.extra_repr()
    x = torch.randn(3, 8, 3, 3, dtype=torch.float64) * 20
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-12, atol=0)
    x3 = torch.randn(2, 8, 5, dtype=torch.float64)
    torch.testing.assert_close(fast(x3), ref(x3))


def test_fast_lrn_in_bf16_is_within_bf16_rounding():
    x = (torch.randn(4, 16, 6, 6, generator=torch.Generator().manual_seed(3)) * 30).bfloat16()
    x = x.requires_grad_()
    y = FastLRN(5, 1e-2, 0.75, 2.0)(x)
    y.backward(torch.ones_like(y))
    xd = x.detach().double().requires_grad_()
    exact = F.local_response_norm(xd, 5, 1e-2, 0.75, 2.0)
    exact.backward(torch.ones_like(exact))
    assert y.dtype == torch.bfloat16
    # a handful of bf16 roundings (2^-8 each) on the way: well inside 2^-5 relative
    torch.testing.assert_close(y.double(), exact, rtol=2**-5, atol=1e-3)
    torch.testing.assert_close(
        x.grad.double(), xd.grad, rtol=2**-5, atol=2**-5 * xd.grad.abs().max().item()
    )


@pytest.mark.parametrize("fmt", LAYOUTS)
def test_zfnet_with_fast_ops_matches_reference(fmt):
    torch.manual_seed(0)
    ref = ZFNet(10, width=0.25, head_pool=2, dropout=0.0).double()
    fast = use_fast_ops(ZFNet(10, width=0.25, head_pool=2, dropout=0.0).double())
    assert isinstance(fast.layer("norm2"), FastLRN) and isinstance(
        fast.layer("pool5"), FastMaxPool2d
    )
    assert fast.layer("pool1").padding == 1 and fast.layer("norm1").k == 2.0
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64).contiguous(memory_format=fmt)
    ref.to(memory_format=fmt), fast.to(memory_format=fmt)
    ya, yb = ref(x), fast(x)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-12)
    for (name, pa), pb in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_pool_output_size_matches_pytorch():
    for size in range(3, 15):
        for kernel, stride, padding in [(3, 2, 0), (3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 2)]:
            for ceil_mode in (False, True):
                expected = F.max_pool2d(
                    torch.zeros(1, 1, size, size), kernel, stride, padding, ceil_mode=ceil_mode
                ).shape[-1]
                assert pool_output_size(size, kernel, stride, padding, ceil_mode) == expected


def test_fast_max_pool_is_a_drop_in_module():
    fast, ref = FastMaxPool2d(3, 2, 1), nn.MaxPool2d(3, 2, 1)
    assert isinstance(fast, nn.MaxPool2d) and fast.extra_repr() == ref.extra_repr()
    a, b = _pair((2, 3, 11, 11), torch.channels_last)
    ya, ga = _fwd_bwd(fast, a)
    yb, gb = _fwd_bwd(ref, b)
    assert torch.equal(ya, yb) and torch.equal(ga, gb)


def test_registries_resolve_names():
    assert resolve_impl("lrn", "fast") is FastLRN and resolve_impl("pool", "fast") is FastMaxPool2d
    assert LRN_IMPLS["torch"] is nn.LocalResponseNorm and POOL_IMPLS["torch"] is nn.MaxPool2d
    assert resolve_impl("lrn", nn.Identity) is nn.Identity
    with pytest.raises(KeyError, match="valid: torch, fast"):
        resolve_impl("pool", "triton")


@pytest.mark.skipif(
    INTERPRETED or tk.triton is None, reason="needs triton, not already interpreted"
)
def test_triton_kernels_interpreted():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        __file__,
        "-k",
        "interp_",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-1000:]


@interp
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-2, 0.75, 2.0), (4, 0.3, 0.5, 1.0)])
def test_interp_triton_lrn(fmt, size, alpha, beta, k):
    a, b = _pair((2, 7, 3, 5), fmt, dtype=torch.float32)
    ya, ga = _fwd_bwd(lambda x: tk.lrn(x, size, alpha, beta, k), a)
    yb, gb = _fwd_bwd(lambda x: F.local_response_norm(x, size, alpha, beta, k), b)
    torch.testing.assert_close(ya, yb, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(ga, gb, rtol=2e-5, atol=1e-5)
    assert ya.is_contiguous(memory_format=fmt) and ga.is_contiguous(memory_format=fmt)


POOLS = [(3, 2, 1, False), (3, 2, 0, False), (3, 2, 1, True), (2, 2, 0, False), (3, 1, 1, False)]


@interp
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", POOLS)
def test_interp_triton_max_pool_with_ties(fmt, kernel, stride, padding, ceil_mode):
    # Integers 0..2 make most windows tied: the gradient must go to the first argmax only.
    x = torch.randint(0, 3, (2, 3, 9, 10), generator=torch.Generator().manual_seed(0)).float()
    x = x.contiguous(memory_format=fmt)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = tuple(pool_output_size(n, kernel, stride, padding, ceil_mode) for n in x.shape[2:])
    ya = tp.max_pool(a, kernel, stride, padding, out)
    yb = F.max_pool2d(b, kernel, stride, padding, ceil_mode=ceil_mode)
    g = torch.randint(-4, 5, yb.shape, generator=torch.Generator().manual_seed(1)).float()
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(ya, yb)
    assert torch.equal(a.grad, b.grad)
    assert a.grad.is_contiguous(memory_format=fmt)


@interp
def test_interp_triton_max_pool_offsets_and_half_precision():
    x = torch.randn(2, 4, 11, 11, generator=torch.Generator().manual_seed(2)).bfloat16()
    y, arg = tp.max_pool_forward(x, 3, 2, 1, (6, 6))
    ref, idx = F.max_pool2d(x.float(), 3, 2, 1, return_indices=True)
    assert arg.dtype == torch.uint8 and torch.equal(y.float(), ref)
    oh = torch.arange(6).view(-1, 1)
    ow = torch.arange(6).view(1, -1)
    rows = oh * 2 - 1 + arg.long() // 3
    cols = ow * 2 - 1 + arg.long() % 3
    assert torch.equal(rows * 11 + cols, idx)
    g = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(3)).bfloat16()
    gx = tp.max_pool_backward(g, arg, x.shape, 3, 2, 1, channels_last=False)
    expected = torch.zeros(2, 4, 121).scatter_add_(2, idx.flatten(2), g.float().flatten(2))
    # fp32 sums, one rounding to bf16 (the interpreter truncates where GPUs round): 1 ulp.
    torch.testing.assert_close(gx.float().flatten(2), expected, rtol=2**-7, atol=0)


@pytest.mark.slow
def test_compiled_fast_lrn_matches_eager_reference():
    torch.manual_seed(0)
    ref = ZFNet(10, width=0.125, head_pool=1, dropout=0.0)
    fast = use_fast_ops(ZFNet(10, width=0.125, head_pool=1, dropout=0.0))
    fast.load_state_dict(ref.state_dict())
    compiled = torch.compile(fast)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    ya, yb = ref(x), compiled(x)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-5)
    for (name, pa), pb in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_triton_self_check_falls_back_with_one_warning(monkeypatch):
    """A machine where the kernels cannot be built or disagree gets PyTorch's ops, not a crash."""
    from zflight.models import fast_ops, triton_kernels, triton_pool

    def exact_lrn(t, size, alpha, beta, k):
        return torch.nn.functional.local_response_norm(t, size, alpha, beta, k)

    def exact_pool(t, kernel, stride, padding, out):
        return torch.nn.functional.max_pool2d(t, kernel, stride, padding)

    def broken(*args):
        raise RuntimeError("Failed to find C compiler")

    cases = [
        (exact_lrn, exact_pool, True),
        (broken, exact_pool, False),
        (exact_lrn, lambda t, *a: exact_pool(t, *a) * 1.5, False),  # wrong values
    ]
    for lrn, pool, works in cases:
        monkeypatch.setattr(fast_ops, "_TRITON_CHECKED", {})
        monkeypatch.setattr(triton_kernels, "lrn", lrn)
        monkeypatch.setattr(triton_pool, "max_pool", pool)
        if works:
            assert fast_ops.triton_works(torch.device("cpu"), torch.float32, False)
        else:
            with pytest.warns(UserWarning, match="using PyTorch's ops"):
                assert not fast_ops.triton_works(torch.device("cpu"), torch.float32, True)
            assert not fast_ops.triton_works(torch.device("cpu"), torch.float32, True)  # cached


def test_triton_self_check_works_inside_inference_mode_and_autocast(monkeypatch):
    from zflight.models import fast_ops, triton_kernels, triton_pool

    monkeypatch.setattr(fast_ops, "_TRITON_CHECKED", {})
    monkeypatch.setattr(
        triton_kernels,
        "lrn",
        lambda t, *a: torch.nn.functional.local_response_norm(t.float(), *a).to(t.dtype),
    )
    monkeypatch.setattr(
        triton_pool, "max_pool", lambda t, k, s, p, out: torch.nn.functional.max_pool2d(t, k, s, p)
    )
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast_ops.triton_works(torch.device("cpu"), torch.bfloat16, True)
