"""Brevitas' IntQuant arithmetic with a per-tensor scale as one pass forward and one backward.

:class:`qssm.quant.quantizers.FakeQuant` makes seven torch passes over its input forward and a
dozen backward; on the (B, L, H) activations of a QAT step that was a tenth of the step.  These
kernels make the same float32 operations on the same values in the same order — x / s, + z,
round half to even, clamp, − z, × s forward; g·[inside], g·(code − z), −(g·s·[inside])·x /
(s·s) and g·s·([inside] − 1) backward — so values and elementwise gradients are bit-identical;
the scale's and zero point's gradients are those products summed in float64 (in fixed chunks,
whatever the thread count) and rounded once, as FakeQuant's torch ops sum them.  Nothing is
saved but the input: the backward kernel recomputes each code (the same float32 operations on
the same value) and its clamp mask, which costs less than writing and reading them.
``tests/quant/kernels/test_fakequant.py`` checks them against the torch arithmetic bit for bit
and the sums against float64 sums of its terms.
"""

import numba
import numpy as np
import torch

from ...models.kernels import numba_threads

SMALL = 2**16  # elements below which torch's ops beat starting the kernels' threads
CHUNK = 2**14  # elements per partial sum of the scale's and zero point's gradients


def applies(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> bool:
    """The kernels take float32 tensors of at least ``SMALL`` elements with one scale and one
    zero point."""
    dtypes = {x.dtype, scale.dtype, zero_point.dtype} == {torch.float32}
    return dtypes and scale.numel() == 1 and zero_point.numel() == 1 and x.numel() >= SMALL


def forward(x, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """The fake-quantized x."""
    x_ = x.detach().contiguous()
    out = torch.empty_like(x_)
    s, z = np.float32(scale.item()), np.float32(zero_point.item())
    numba_threads()
    _forward(x_.numpy().ravel(), s, z, np.float32(qmin), np.float32(qmax), out.numpy().ravel())
    return out


def backward(g, x, scale, zero_point, qmin: int, qmax: int, needs: tuple[bool, ...]):
    """(∂L/∂x, ∂L/∂scale, ∂L/∂zero point) where ``needs`` asks for them, from the forward
    pass's input x (the codes are recomputed: the same float32 operations, the same codes)."""
    g_ = g.contiguous()
    gx = torch.empty_like(g_)
    sums = torch.zeros((-(-g_.numel() // CHUNK), 2), dtype=torch.float64)
    s, z = np.float32(scale.item()), np.float32(zero_point.item())
    arrays = [t.numpy().ravel() for t in (g_, x.detach().contiguous(), gx)]
    numba_threads()
    _backward(*arrays, sums.numpy(), s, z, np.float32(qmin), np.float32(qmax), *needs[1:3])
    gs, gz = (sums[:, k].sum().to(scale.dtype).reshape(scale.shape) for k in (0, 1))
    return gx if needs[0] else None, gs if needs[1] else None, gz if needs[2] else None


@numba.njit(inline="always")
def quantize(x, s, z, qmin, qmax):
    """(round(x / s + z), the fake-quantized value (clamp(that, qmin, qmax) − z) · s)."""
    r = np.rint(x / s + z)
    return r, (min(max(r, qmin), qmax) - z) * s


@numba.njit(inline="always")
def quantize_grads(g, x, r, s, z, qmin, qmax):
    """The straight-through gradients at one element with incoming gradient g and rounded code
    r (unclipped, or clipped no further than one past the range): (∂L/∂x = g·[inside], the
    scale's two terms
    g·(code − z) and −(g·s·[inside])·x / (s·s), [inside])."""
    inside = np.float32(1) if (r >= qmin) & (r <= qmax) else np.float32(0)
    by_code = g * (min(max(r, qmin), qmax) - z)
    return g * inside, by_code, (-(g * s * inside) * x) / (s * s), inside


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _forward(x, s, z, qmin, qmax, out):
    for i in numba.prange(x.size):
        _, out[i] = quantize(x[i], s, z, qmin, qmax)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _backward(g, x, gx, sums, s, z, qmin, qmax, scale_grad, zp_grad):
    """gx elementwise; sums (chunks, 2) float64: the scale's and the zero point's terms summed
    per chunk of CHUNK elements, so the sums do not depend on the thread count."""
    n = g.size
    for c in numba.prange(sums.shape[0]):
        part = slice(c * CHUNK, min(c * CHUNK + CHUNK, n))
        terms = np.empty((2, part.stop - part.start), dtype=np.float32)
        _chunk(g[part], x[part], s, z, qmin, qmax, gx[part], terms)
        if scale_grad:
            sums[c, 0] = sum64(terms[0])
        if zp_grad:
            sums[c, 1] = sum64(terms[1])


@numba.njit(cache=True, error_model="numpy")
def _chunk(g, x, s, z, qmin, qmax, gx, terms):
    """gx and the per-element terms of one chunk: the scale's, g·(code − z) − (g·s·[inside])·x
    / (s·s) (two terms that nearly cancel: their float32 sum is exact to its own rounding), and
    the zero point's, g·s·([inside] − 1).  (A loop of its own: inside the parallel one it does
    not vectorize.)"""
    one = np.float32(1)
    for i in range(g.size):
        r, _ = quantize(x[i], s, z, qmin, qmax)
        gx[i], by_code, by_x, inside = quantize_grads(g[i], x[i], r, s, z, qmin, qmax)
        terms[0, i] = by_code + by_x
        terms[1, i] = g[i] * s * (inside - one)


@numba.njit(cache=True, fastmath={"reassoc"})
def sum64(a):
    """Σ a in float64, reassociated here only (so it vectorizes); the terms stay as computed."""
    flat = a.reshape(-1)
    total = 0.0
    for i in range(flat.size):
        total += np.float64(flat[i])
    return total
