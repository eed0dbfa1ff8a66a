"""The quantized minGRU recurrence as one autograd node: numba kernels forward and backward."""

import numba
import numpy as np
import torch

from ...models.kernels import as_array, numba_threads
from . import code_dtype


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
    channel in gscale (B, H), float64; ∂L/∂keep_t = ∂L/∂p · h_{t−1}, ∂L/∂write_t = ∂L/∂p,
    ∂L/∂h_{t−1} += ∂L/∂p · keep_t, ∂L/∂z = −∂L/∂keep + ∂L/∂write · h̃, ∂L/∂h̃ = ∂L/∂write · z.
    Elementwise in the inputs' dtype, as autograd of the loop."""
    Bsz, L, H = z.shape
    qmin, qmax = qrange[0], qrange[1]
    zero = qmin - qmin
    one = zero + 1
    for b in numba.prange(Bsz):
        carry = np.zeros(H, dtype=z.dtype)  # ∂L/∂h_t through h_{t+1}
        gs = gscale[b]
        for t in range(L - 1, -1, -1):
            zt, ct, Rt, gt = z[b, t], cand[b, t], R[b, t], gh[b, t]
            Rp = R[b, t - 1] if t > 0 else Rt  # codes of h_{t−1} (unused at t = 0: h_{−1} = 0)
            gzt, gct = gz[b, t], gcand[b, t]
            for j in range(H):
                hp = (min(max(Rp[j], qmin), qmax) - zp[j]) * scale[j] if t > 0 else zero
                g = gt[j] + carry[j] if t < L - 1 else gt[j]
                keep = one - zt[j]
                p = keep * hp + zt[j] * ct[j]
                code = min(max(Rt[j], qmin), qmax)
                inside = code == Rt[j]
                gs[j] += g * ((code - zp[j]) - (p / scale[j] if inside else zero))
                gp = g if inside else zero
                carry[j] = gp * keep
                gzt[j] = -(gp * hp) + gp * ct[j]
                gct[j] = gp * zt[j]
