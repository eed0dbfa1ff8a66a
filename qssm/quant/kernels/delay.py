"""mGRADE's delay convolution with integer delays as a sparse delay line: one autograd node.

With its delays quantized (role ``conv.delay``) the convolution kernel (H, max_delay) holds
n_taps non-zeros per channel, y[b, t, h] = Σ_i w[h, i] u[b, t − d[h, i], h].  A dense depthwise
convolution over all max_delay lags does max_delay / n_taps times the arithmetic (16× for
``mgrade_8``) and needs (B, H, L) copies of its input and output both ways.  These kernels take
each sequence into a (H, L) block once (it fits the core's cache), add the n_taps shifted rows
per channel as contiguous loops, and write the block back: forward y; backward ∂L/∂u by the
same shifts the other way and ∂L/∂w[h, i] = Σ_{b, t} g[b, t, h] u[b, t − d[h, i], h], each
sequence's dot products in float64, summed over the batch in float64.  The delays get no
gradient (they are rounded; they no longer move).  Values equal the dense convolution's to
float32 rounding (the four products are summed in tap order, the dense one in its own);
``tests/quant/kernels/test_delay.py`` checks them and the gradients against a float64
reference."""

import numba
import numpy as np
import torch

from ...models.kernels import as_array, numba_threads


class DelayLine(torch.autograd.Function):
    """u (B, L, H) float32, weight (H, T), delays (H, T) int64 → y (B, L, H)."""

    @staticmethod
    def forward(ctx, u, weight, delays):
        u_ = as_array(u.float())
        y = torch.empty(u_.shape, dtype=torch.float32)
        w, d = as_array(weight.float()), as_array(delays)
        numba_threads()
        _shift_add(u_, w, d, np.int64(1), y.numpy())
        ctx.save_for_backward(u, weight, delays)
        return y.to(torch.promote_types(u.dtype, weight.dtype))

    @staticmethod
    def backward(ctx, g):
        u, weight, delays = ctx.saved_tensors
        g_, u_ = as_array(g.float()), as_array(u.float())
        w, d = as_array(weight.float()), as_array(delays)
        numba_threads()
        gu = gw = None
        if ctx.needs_input_grad[0]:
            gu = torch.empty(g_.shape, dtype=torch.float32)
            _shift_add(g_, w, d, np.int64(-1), gu.numpy())
            gu = gu.to(u.dtype)
        if ctx.needs_input_grad[1]:
            sums = np.zeros((g_.shape[0], *w.shape))  # (B, H, T)
            _tap_grads(g_, u_, d, sums)
            gw = torch.from_numpy(sums).sum(0).to(weight.dtype)
        return gu, gw, None


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _shift_add(x, w, d, sign, y):
    """sign 1: y[b, t, h] = Σ_i w[h, i] x[b, t − d[h, i], h] (zero before the start);
    sign −1: y[b, s, h] = Σ_i w[h, i] x[b, s + d[h, i], h] (zero past the end)."""
    Bsz, L, H = x.shape
    for b in numba.prange(Bsz):
        xt, yt = np.empty((H, L), np.float32), np.zeros((H, L), np.float32)
        for t in range(L):
            for h in range(H):
                xt[h, t] = x[b, t, h]
        for h in range(H):
            for i in range(w.shape[1]):
                k, lag = w[h, i], d[h, i]
                src, dst = xt[h], yt[h]
                if sign > 0:
                    for t in range(lag, L):
                        dst[t] += k * src[t - lag]
                else:
                    for t in range(L - lag):
                        dst[t] += k * src[t + lag]
        for t in range(L):
            for h in range(H):
                y[b, t, h] = yt[h, t]


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _tap_grads(g, u, d, sums):
    """sums[b, h, i] = Σ_t g[b, t, h] u[b, t − d[h, i], h], in float64."""
    Bsz, L, H = g.shape
    for b in numba.prange(Bsz):
        gt, ut = np.empty((H, L), np.float32), np.empty((H, L), np.float32)
        for t in range(L):
            for h in range(H):
                gt[h, t], ut[h, t] = g[b, t, h], u[b, t, h]
        for h in range(H):
            for i in range(d.shape[1]):
                lag = d[h, i]
                sums[b, h, i] = _dot64(gt[h, lag:], ut[h, : L - lag])


@numba.njit(cache=True, fastmath={"reassoc"})
def _dot64(a, b):
    """Σ a·b with each product exact in float64, the sum reassociated (vectorized)."""
    total = 0.0
    for i in range(a.size):
        total += np.float64(a[i]) * np.float64(b[i])
    return total
