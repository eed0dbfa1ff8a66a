"""Brevitas' IntQuant arithmetic with a per-tensor scale as one pass forward and one backward.

:class:`qssm.quant.quantizers.FakeQuant` makes seven torch passes over its input forward and a
dozen backward; on the (B, L, H) activations of a QAT step that was a tenth of the step.  These
kernels make the same float32 operations on the same values in the same order — x / s, + z,
round half to even, clamp, − z, × s forward; g·[inside], g·(code − z), −(g·s·[inside])·x /
(s·s) and g·s·([inside] − 1) backward — so values and elementwise gradients are bit-identical;
the scale's and zero point's gradients stay torch's ``sum_to_size`` of those products, summed as
before.  Saved for the backward pass: the rounded codes clipped to one past the range (int8 up
to 7 bits, int16 above), from which the kernel rebuilds the code and the clamp mask.
``tests/quant/kernels/test_fakequant.py`` checks them against the torch arithmetic bit for bit.
"""

import numba
import numpy as np
import torch

from ...models.kernels import numba_threads
from . import code_dtype

SMALL = 2**16  # elements below which torch's ops beat starting the kernels' threads


def applies(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> bool:
    """The kernels take float32 tensors of at least ``SMALL`` elements with one scale and one
    zero point."""
    dtypes = {x.dtype, scale.dtype, zero_point.dtype} == {torch.float32}
    return dtypes and scale.numel() == 1 and zero_point.numel() == 1 and x.numel() >= SMALL


def forward(x, scale, zero_point, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fake-quantized x, the saved codes)."""
    x_ = x.detach().contiguous()
    out = torch.empty_like(x_)
    codes = torch.empty(x_.shape, dtype=code_dtype(qmin - 1, qmax + 1))
    s, z = np.float32(scale.item()), np.float32(zero_point.item())
    numba_threads()
    _forward(x_.numpy().ravel(), s, z, np.float32(qmin), np.float32(qmax), out.numpy().ravel(),
             codes.numpy().ravel())  # fmt: skip
    return out, codes


def backward(g, x, scale, zero_point, codes, qmin: int, qmax: int, needs: tuple[bool, ...]):
    """(∂L/∂x, ∂L/∂scale, ∂L/∂zero point) where ``needs`` asks for them."""
    g_ = g.contiguous()
    parts = [torch.empty_like(g_) for _ in range(4)]  # g·[in], g·(code − z), −g·s·[in]·x/s², …
    s, z = np.float32(scale.item()), np.float32(zero_point.item())
    arrays = [t.numpy().ravel() for t in (g_, x.detach().contiguous(), codes, *parts)]
    numba_threads()
    _backward(*arrays, s, z, np.float32(qmin), np.float32(qmax), needs[1], needs[2])
    gx, by_code, by_x, gz = parts
    gs = by_code.sum_to_size(scale.shape) + by_x.sum_to_size(scale.shape) if needs[1] else None
    return gx if needs[0] else None, gs, gz.sum_to_size(zero_point.shape) if needs[2] else None


@numba.njit(inline="always")
def quantize(x, s, z, qmin, qmax):
    """(round(x / s + z), the fake-quantized value (clamp(that, qmin, qmax) − z) · s)."""
    r = np.rint(x / s + z)
    return r, (min(max(r, qmin), qmax) - z) * s


@numba.njit(inline="always")
def quantize_grads(g, x, r, s, z, qmin, qmax):
    """The straight-through gradients at one element with incoming gradient g and rounded code
    r (clipped no further than one past the range): (∂L/∂x = g·[inside], the scale's two terms
    g·(code − z) and −(g·s·[inside])·x / (s·s), [inside])."""
    inside = np.float32(1) if (r >= qmin) & (r <= qmax) else np.float32(0)
    by_code = g * (min(max(r, qmin), qmax) - z)
    return g * inside, by_code, (-(g * s * inside) * x) / (s * s), inside


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _forward(x, s, z, qmin, qmax, out, codes):
    lo, hi = qmin - np.float32(1), qmax + np.float32(1)
    for i in numba.prange(x.size):
        r, out[i] = quantize(x[i], s, z, qmin, qmax)
        codes[i] = min(max(r, lo), hi)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _backward(g, x, codes, gx, by_code, by_x, gz, s, z, qmin, qmax, scale_grad, zp_grad):
    one = np.float32(1)
    for i in numba.prange(g.size):
        gx[i], code_term, x_term, inside = quantize_grads(
            g[i], x[i], np.float32(codes[i]), s, z, qmin, qmax
        )
        if scale_grad:
            by_code[i], by_x[i] = code_term, x_term
        if zp_grad:
            gz[i] = g[i] * s * (inside - one)
