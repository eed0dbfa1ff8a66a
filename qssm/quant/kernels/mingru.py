"""The quantized minGRU recurrence as one autograd node: numba kernels forward and backward."""

import numba
import numpy as np
import torch

from ...models.kernels import (
    as_array,
    hard_sigmoid_grad,
    hard_sigmoid_value,
    numba_threads,
    window_grad,
)
from . import code_dtype
from .fakequant import quantize, quantize_grads, sum64

BLOCK = 16  # timesteps a backward kernel sums a scale's terms over in float32


class QuantGateScan(torch.autograd.Function):
    """h_t = Q((1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t): the minGRU recurrence with its state quantized
    every step, gate z and candidate h̃ (B, L, H) → h (B, L, H); scale and zero point broadcast
    against the state (B, H).

    Forward: the step loop's arithmetic in the inputs' dtype and order — keep = 1 − z,
    write = z · h̃, keep · h + write, then fake_quant's ÷ scale, + zp, round half to even, clamp,
    − zp, × scale, no fused multiply-add — so codes and states are bit-identical to the loop.
    Saved: the inputs and the rounded codes before clamping, clipped to one past the range (int8
    up to 7 bits, int16 above), from which the backward kernel rebuilds each state and its clamp
    mask.  The kernels work in the (B, L, H) layout: one sequence per thread, the innermost loop
    over the channels of a timestep."""

    @staticmethod
    def forward(ctx, z, cand, scale, zp, qmin, qmax):
        h = torch.empty(z.shape, dtype=z.dtype)
        codes = torch.empty(z.shape, dtype=code_dtype(qmin - 1, qmax + 1))
        numba_threads()
        _qscan_forward(*_arrays(z, cand, scale, zp, qmin, qmax), codes.numpy(), h.numpy())
        ctx.save_for_backward(z, cand, codes, scale, zp)
        ctx.q = (qmin, qmax)
        return h

    @staticmethod
    def backward(ctx, gh):
        z, cand, codes, scale, zp = ctx.saved_tensors
        gz, gcand = torch.empty_like(z), torch.empty_like(z)
        gscale = torch.zeros((z.shape[0], z.shape[2]), dtype=torch.float64)  # (B, H)
        numba_threads()
        _qscan_backward(
            *_arrays(z, cand, scale, zp, *ctx.q), codes.numpy(), as_array(gh.to(z.dtype)),
            gz.numpy(), gcand.numpy(), gscale.numpy(),
        )  # fmt: skip
        gscale = gscale.sum_to_size(scale.shape).to(scale.dtype)
        return gz, gcand.to(cand.dtype), gscale, None, None, None


def _arrays(z, cand, scale, zp, qmin, qmax) -> tuple:
    """z, h̃ (B, L, H); scale and zero point per channel (H,); the code range — all in z's
    dtype, as the step loop computes."""
    Bsz, _, H = z.shape
    s_, z_ = (as_array(t.to(z.dtype).expand(Bsz, H)[0]) for t in (scale, zp))
    qrange = np.array([qmin, qmax, qmin - 1, qmax + 1], dtype=s_.dtype)  # float64 bounds would
    # widen float32 arithmetic
    return as_array(z), as_array(cand.to(z.dtype)), s_, z_, qrange


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _qscan_forward(z, cand, scale, zp, qrange, R, h):
    """h[b, t] = (clamp(r, qmin, qmax) − zp) · scale with r = rint(((1 − z) · h[b, t − 1] +
    z · cand) / scale + zp) at [b, t], h[b, −1] = 0; R[b, t] = r clipped to [qmin − 1, qmax + 1].
    ``qrange``: qmin, qmax, qmin − 1, qmax + 1 in the state's dtype."""
    Bsz, L, H = z.shape
    qmin, qmax, lo, hi = qrange[0], qrange[1], qrange[2], qrange[3]
    one = qrange[0] - qrange[0] + 1  # typed as the state (a bare 1 widens float32 to float64)
    for b in numba.prange(Bsz):
        prev = np.zeros(H, dtype=h.dtype)
        for t in range(L):
            zt, ct, ht, Rt = z[b, t], cand[b, t], h[b, t], R[b, t]
            for j in range(H):
                r = np.rint(((one - zt[j]) * prev[j] + zt[j] * ct[j]) / scale[j] + zp[j])
                Rt[j] = min(max(r, lo), hi)
                prev[j] = (min(max(r, qmin), qmax) - zp[j]) * scale[j]
                ht[j] = prev[j]


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _qscan_backward(z, cand, scale, zp, qrange, R, gh, gz, gcand, gscale):
    """BPTT of :func:`_qscan_forward` with fake_quant's straight-through gradients.  With
    g = ∂L/∂h_t, p = keep_t h_{t−1} + write_t and [inside] = (r ∈ [qmin, qmax]): ∂L/∂p =
    g·[inside]; ∂L/∂scale += g·((code − zp) − [inside]·p / scale), summed per sequence and
    channel over BLOCK timesteps in the state's dtype, then in gscale (B, H), float64;
    ∂L/∂keep_t = ∂L/∂p · h_{t−1}, ∂L/∂write_t = ∂L/∂p, ∂L/∂h_{t−1} += ∂L/∂p · keep_t,
    ∂L/∂z = −∂L/∂keep + ∂L/∂write · h̃, ∂L/∂h̃ = ∂L/∂write · z.
    Elementwise in the inputs' dtype, as autograd of the loop."""
    Bsz, L, H = z.shape
    qmin, qmax = qrange[0], qrange[1]
    zero = qmin - qmin
    one = zero + 1
    for b in numba.prange(Bsz):
        carry = np.full(H, -zero)  # ∂L/∂h_t through h_{t+1}; −0 + g is g, zeros' signs too
        block = np.zeros((1, H), dtype=z.dtype)  # the scale's terms over BLOCK steps
        gs = block[0]
        for t in range(L - 1, -1, -1):
            zt, ct, Rt, gt = z[b, t], cand[b, t], R[b, t], gh[b, t]
            Rp = R[b, t - 1] if t > 0 else Rt  # codes of h_{t−1} (unused at t = 0: h_{−1} = 0)
            gzt, gct = gz[b, t], gcand[b, t]
            for j in range(H):
                hp = (min(max(Rp[j], qmin), qmax) - zp[j]) * scale[j] if t > 0 else zero
                g = gt[j] + carry[j]
                keep = one - zt[j]
                p = keep * hp + zt[j] * ct[j]
                code = min(max(Rt[j], qmin), qmax)
                inside = code == Rt[j]
                gs[j] += g * ((code - zp[j]) - (p / scale[j] if inside else zero))
                gp = g if inside else zero
                carry[j] = gp * keep
                gzt[j] = -(gp * hp) + gp * ct[j]
                gct[j] = gp * zt[j]
            if t % BLOCK == 0:
                flush(block, gscale[b : b + 1])


class AtMost(torch.autograd.Function):
    """min(z, cap) for a tensor z and a one-element cap, as one numba pass each way instead of
    torch.minimum's dozen (its backward alone makes eq, div, where, masked_fill, gt/lt twice
    over the whole tensor).  Values and gradients are torch.minimum's bit for bit: a tie
    (z = cap) sends half the gradient each way; the cap's gradient is the sum of the same
    per-element terms in float64 (:func:`total`)."""

    @staticmethod
    def forward(ctx, z, cap):
        out = torch.empty_like(z, memory_format=torch.contiguous_format)
        c = cap.detach().to(z.dtype).reshape(1).numpy()
        numba_threads()
        _at_most_forward(as_array(z).reshape(-1), c, out.numpy().reshape(-1))
        ctx.save_for_backward(z, cap)
        return out

    @staticmethod
    def backward(ctx, g):
        z, cap = ctx.saved_tensors
        gz = torch.empty_like(z, memory_format=torch.contiguous_format)
        need = ctx.needs_input_grad[1]
        gc = torch.empty_like(gz) if need else gz[:0]
        c = cap.detach().to(z.dtype).reshape(1).numpy()
        numba_threads()
        flat = (as_array(t).reshape(-1) for t in (z, g.to(z.dtype)))
        _at_most_backward(*flat, c, gz.numpy().reshape(-1), gc.numpy().reshape(-1), need)
        return gz, torch.tensor(total(gc), dtype=cap.dtype).reshape(cap.shape) if need else None


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _at_most_forward(z, cap, out):
    """out = min(z, cap), NaN where z or cap is NaN (as torch.minimum)."""
    c = cap[0]
    for i in numba.prange(z.size):
        out[i] = c if (z[i] > c) | (c != c) else z[i]


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _at_most_backward(z, g, cap, gz, gc, cap_grad):
    """torch.minimum's backward: gz = where(z = c, g / 2, g) with 0 where z > c; gc the same
    with 0 where z < c."""
    c = cap[0]
    two = np.ones(1, g.dtype)[0] + 1
    zero = two - two
    for i in numba.prange(z.size):
        share = g[i] / two if z[i] == c else g[i]
        gz[i] = zero if z[i] > c else share
        if cap_grad:
            gc[i] = zero if z[i] < c else share


class HardGateScan(torch.autograd.Function):
    """The hardware minGRU layer after its projections with its gate on a per-tensor grid, as
    one autograd node: z = min(fake_quant(clamp(pre / 4 + ½, 0, 1)), cap), the analog
    recurrence h_t = (1 − z_t) h_{t−1} + z_t h̃_t and the comparator [h_t > 0] — pre, h̃ (B, L,
    H) float32 → binary outputs (B, L, H); scale, zero point and cap one element each.

    The same float32 operations on the same values as the five nodes it replaces (hard sigmoid,
    :class:`~qssm.quant.quantizers.FakeQuant`, :class:`AtMost`, ``gru_scan``, comparator), so
    values and elementwise gradients are bit-identical, in one pass each way; the scale's and
    the cap's gradients are the same per-element terms, summed in the kernel (float32 over a
    few timesteps, then float64: far closer to the exact sum than torch's float32 sum).
    Saved: pre, h̃, the states and the gate's codes clipped to one past the range.  The zero
    point gets no gradient (the caller keeps the five nodes when it would need one)."""

    @staticmethod
    def forward(ctx, pre, cand, scale, zp, cap, qmin, qmax):
        h, out = torch.empty(pre.shape), torch.empty(pre.shape)
        codes = torch.empty(pre.shape, dtype=code_dtype(qmin - 1, qmax + 1))
        numba_threads()
        grid = _grid(scale, zp, cap, qmin, qmax)
        arrays = (codes.numpy(), h.numpy(), out.numpy())
        _hard_gate_forward(as_array(pre), as_array(cand), grid, *arrays)
        ctx.save_for_backward(pre, cand, h, codes, scale, zp, cap)
        ctx.q = (qmin, qmax)
        return out

    @staticmethod
    def backward(ctx, gout):
        pre, cand, h, codes, scale, zp, cap = ctx.saved_tensors
        gpre, gcand = torch.empty_like(h), torch.empty_like(h)
        sums = torch.empty((h.shape[0], 2), dtype=torch.float64)  # the scale's, the cap's
        numba_threads()
        _hard_gate_backward(
            as_array(pre), as_array(cand), h.numpy(), codes.numpy(), _grid(scale, zp, cap, *ctx.q),
            as_array(gout.float()), gpre.numpy(), gcand.numpy(), sums.numpy(),
        )  # fmt: skip
        gscale, gcap = (
            sums[:, k].sum().to(t.dtype).reshape(t.shape) for k, t in enumerate((scale, cap))
        )
        return gpre, gcand, gscale, None, gcap if ctx.needs_input_grad[4] else None, None, None


def _grid(scale, zp, cap, qmin, qmax) -> np.ndarray:
    """scale, zero point, cap, qmin, qmax, qmin − 1, qmax + 1 as float32."""
    values = [t.detach().item() for t in (scale, zp, cap)] + [qmin, qmax, qmin - 1, qmax + 1]
    return np.array(values, dtype=np.float32)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _hard_gate_forward(pre, cand, grid, R, h, out):
    """Per element: the hard sigmoid, fake_quant's x / s, + zp, round half to even, clamp, − zp,
    × s (R: the rounded code clipped to one past the range), min with the cap (NaN if the cap
    is NaN), the recurrence step and the comparator."""
    Bsz, L, H = pre.shape
    zero, half, one, four = np.array([0, 0.5, 1, 4], dtype=np.float32)
    s, zp, c, qmin, qmax, lo, hi = grid[0], grid[1], grid[2], grid[3], grid[4], grid[5], grid[6]
    for b in numba.prange(Bsz):
        prev = np.zeros(H, dtype=np.float32)
        for t in range(L):
            pt, ct, Rt, ht, ot = pre[b, t], cand[b, t], R[b, t], h[b, t], out[b, t]
            for j in range(H):
                hs = hard_sigmoid_value(pt[j], zero, half, one, four)
                r, zq = quantize(hs, s, zp, qmin, qmax)
                Rt[j] = min(max(r, lo), hi)
                z = c if (zq > c) | (c != c) else zq
                prev[j] = (one - z) * prev[j] + z * ct[j]
                ht[j] = prev[j]
                ot[j] = one if prev[j] > zero else zero


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _hard_gate_backward(pre, cand, h, R, grid, gout, gpre, gcand, sums):
    """Per element, backwards in time: the comparator's window, the recurrence step (as
    ``gru_scan``'s backward), AtMost's split of a tie, fake_quant's straight-through gradient
    (as ``fakequant._backward``), the hard sigmoid's gradient.  sums (B, 2): the scale's and
    the cap's gradient per sequence.  The scale's two terms per element, g·(code − zp) and
    −g·s·[inside]·x / s², nearly cancel; their float32 sum is exact to its own rounding, and it
    is summed per channel in float32 over BLOCK timesteps, then in float64 (accumulators that
    stay in registers: writing the terms out for torch to sum took most of the time)."""
    Bsz, L, H = pre.shape
    zero, half, one, four = np.array([0, 0.5, 1, 4], dtype=np.float32)
    two = one + one
    s, zp, c, qmin, qmax = grid[0], grid[1], grid[2], grid[3], grid[4]
    for b in numba.prange(Bsz):
        carry = np.full(H, -zero)  # ∂L/∂h_t through h_{t+1}; −0 + g is g, zeros' signs too
        zeros = np.zeros(H, dtype=np.float32)
        block = np.zeros((2, H), dtype=np.float32)  # the scale's and the cap's terms
        by_scale, by_cap = block[0], block[1]
        running = np.zeros((2, H))  # the float64 sums
        for t in range(L - 1, -1, -1):
            pt, ct, ht, Rt, gt = pre[b, t], cand[b, t], h[b, t], R[b, t], gout[b, t]
            gpt, gct, hp = gpre[b, t], gcand[b, t], h[b, t - 1] if t > 0 else zeros
            for j in range(H):
                hs = hard_sigmoid_value(pt[j], zero, half, one, four)
                r = np.float32(Rt[j])
                code = min(max(r, qmin), qmax)
                zq = (code - zp) * s
                z = c if (zq > c) | (c != c) else zq
                g = window_grad(ht[j], gt[j], zero, one) + carry[j]
                carry[j] = g * (one - z)
                gct[j] = g * z
                gz = -(g * hp[j]) + g * ct[j]
                share = gz / two if zq == c else gz
                gq = zero if zq > c else share
                by_cap[j] += zero if zq < c else share
                ghs, by_code, by_x, _ = quantize_grads(gq, hs, r, s, zp, qmin, qmax)
                by_scale[j] += by_code + by_x
                gpt[j] = hard_sigmoid_grad(pt[j], ghs, zero, half, one, four)
            if t % BLOCK == 0:
                flush(block, running)
        sums[b, 0], sums[b, 1] = running[0].sum(), running[1].sum()


def total(t: torch.Tensor) -> float:
    """Σ t in float64 (a contiguous float32 tensor)."""
    return sum64(t.numpy().reshape(-1))


@numba.njit(inline="always")
def flush(block, sums):
    """sums += block (float32 partial sums into float64 ones), block = 0."""
    for k in range(block.shape[0]):
        for j in range(block.shape[1]):
            sums[k, j] += np.float64(block[k, j])
            block[k, j] = np.float32(0)
