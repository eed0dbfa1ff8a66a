"""The quantized S4D recurrence as one autograd node: numba kernels forward and backward."""

import numba
import numpy as np
import torch

from ...models.kernels import numba_threads
from . import code_dtype

CHUNK = 16  # timesteps per block of saved codes (2 MB at batch 64, 16 bits); even: the
# backward takes the steps in pairs, so only the last block may have odd length


def _parts_first(t: torch.Tensor, full: tuple[int, int, int], dtype) -> np.ndarray:
    """An (H, n) real or complex tensor, or a scale / zero point that broadcasts against the
    state's parts, as a contiguous (H, P, n) array (P = 2: real and imaginary part; P = 1: a real
    S4D), the layout the kernels index per mode."""
    H, n, P = full
    t = t.detach()
    t = torch.view_as_real(t) if t.is_complex() else t
    t = t.expand(H, n, 2) if P == 2 else t.expand(H, n)[..., None]
    return t.movedim(-1, 1).to(dtype).contiguous().numpy()


class S4DScan(torch.autograd.Function):
    """y_t = readout(x_t), x_t = Q(Ā x_{t−1} + B̄ u_t) for a real or complex diagonal S4D.

    u (B, L, H); Ā, B̄, C (H, n) real or complex; scale, zp broadcast against the state parts
    (H, n[, 1]).  Returns y (B, L, H) without the D term.

    Forward: a numba kernel runs the recurrence block by block (CHUNK timesteps) with the float32
    operations of the step loop in the same order — complex product, + B̄u, ÷ scale, + zp, round
    half to even, clamp, − zp, × scale, no fused multiply-add — and reads the state out as
    ``qssm.models.s4d.readout`` does (Re(C x) per mode, summed in ``halving_sum``'s order), so
    codes and outputs are bit-identical to the step loop.  The kernels keep the batch as the
    innermost axis (state (H, P, n, B)): every inner loop runs over independent sequences with
    the mode's parameters held in registers, and vectorizes.  Saved, one array per block: the
    rounded codes before clamping, clipped to one past the range (int8 up to 7 bits, int16
    above), from which the backward kernel rebuilds each state and its clamp mask.  (Blocks of
    a few MB come back from the allocator's free lists step after step; one 100 MB array would
    be a fresh mapping whose pages fault in on every training step.)

    Backward: BPTT with Brevitas' straight-through estimator, a numba kernel per block in
    reverse (:func:`_s4d_backward`), in float32 with the parameter sums totalled in float64:
    gradients within float32 rounding of a float64 BPTT, not bit-identical to it."""

    @staticmethod
    def forward(ctx, u, A, B, C, scale, zp, qmin, qmax):
        Bsz, L, _ = u.shape
        cplx = A.is_complex()
        full = (*A.shape, 2 if cplx else 1)  # (H, n, P)
        H, n, P = full
        A_, B_, C_, s_, z_ = (_parts_first(t, full, torch.float32) for t in (A, B, C, scale, zp))
        code = code_dtype(qmin - 1, qmax + 1)
        x = np.zeros((H, P, n, Bsz), dtype=np.float32)
        u_ = u.detach().permute(1, 2, 0).contiguous().numpy()  # (L, H, B)
        y = torch.empty(L, H, Bsz, dtype=torch.float32)
        qrange = np.float32(qmin), np.float32(qmax)  # float64 bounds would widen the arithmetic
        numba_threads()
        blocks = []
        for c0 in range(0, L, CHUNK):
            blocks.append(torch.empty((min(CHUNK, L - c0), H, P, n, Bsz), dtype=code))
            _s4d_forward(u_, A_, B_, C_, s_, z_, *qrange, c0, x, blocks[-1].numpy(), y.numpy())
        ctx.save_for_backward(u, A, B, C, scale, zp, *blocks)
        ctx.q = (qmin, qmax)
        return y.permute(2, 0, 1).contiguous()

    @staticmethod
    def backward(ctx, gy):
        u, A, B, C, scale, zp, *blocks = ctx.saved_tensors
        qmin, qmax = ctx.q
        cplx = A.is_complex()
        full = (*A.shape, 2 if cplx else 1)
        params = [_parts_first(t, full, torch.float32) for t in (A, B, C, scale, zp)]
        Bsz, L, H = u.shape
        u_, gy_ = (np.zeros((L + 1, H, Bsz), dtype=np.float32) for _ in range(2))  # (L+1, H, B)
        for t, a in ((u, u_), (gy, gy_)):  # row L, zero: a step past the end (see the kernel)
            torch.from_numpy(a)[:L].copy_(t.detach().permute(1, 2, 0))
        numba_threads()
        gu = np.empty_like(u_)
        carry = np.zeros((*params[0].shape, Bsz), dtype=np.float32)  # (H, P, n, B)
        q = np.float32(qmin), np.float32(qmax)
        sums = np.zeros((3, *params[0].shape))
        t0 = L
        for i in range(len(blocks) - 1, -1, -1):  # blocks in reverse: time runs backwards
            R = blocks[i].numpy()
            t0 -= len(R)
            before = blocks[i - 1][-1].numpy() if i > 0 else R[0]  # the codes of x_{t0−1}
            _s4d_backward(R, before, t0, u_, *params, *q, gy_, carry, sums, gu)
        gA, gB, gC = (  # (H, P, n) → complex or real (H, n)
            torch.view_as_complex(torch.from_numpy(g).movedim(1, -1).contiguous())
            if cplx
            else torch.from_numpy(g)[:, 0]
            for g in sums
        )
        # ∂x/∂s = (code − zp) − [inside]·p/s summed against ∂L/∂x: Σ gx·conj(x)/s −
        # Σ gp·conj(p)/s.  With gx = g·conj(C) + carry, carry_t = gp_{t+1}·conj(Ā) and
        # p = Ā x_{t−1} + B̄ u_t (x_{−1} = 0), the first is (conj(C)·gC + conj(Ā)·gA)/s, the
        # second (conj(Ā)·gA + conj(B̄)·gB)/s: the Ā terms cancel
        B64, C64 = B.detach().to(gB.dtype), C.detach().to(gC.dtype)
        s = scale.detach().double().reshape(scale.shape[: A.ndim]) if cplx else scale.double()
        gscale = (C64.conj() * gC - B64.conj() * gB).real / s
        gscale = gscale.reshape(gscale.shape + (1,) * (scale.ndim - gscale.ndim))
        gscale = gscale.sum_to_size(scale.shape).to(scale.dtype)
        gu = torch.from_numpy(gu)[:L].permute(2, 0, 1)
        return gu, gA.to(A.dtype), gB.to(B.dtype), gC.to(C.dtype), gscale, None, None, None


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _s4d_forward(u, A, B, C, scale, zp, qmin, qmax, t0, x, R, y):
    """Timesteps t0 … t0+T−1 of the quantized recurrence and its readout, in float32.

    u (L, H, B); A, B, C, scale, zp (H, P, n); x (H, P, n, B) the state, updated in place;
    R (T, H, P, n, B) receives the block's rounded codes clipped to [qmin − 1, qmax + 1];
    y (L, H, B) the readout P·Σ Re(C x), summed over the modes in ``halving_sum``'s order.
    Channels run in parallel; the innermost loops run over the batch."""
    H, P, n, Bsz = x.shape
    T = R.shape[0]
    lo, hi = qmin - np.float32(1), qmax + np.float32(1)
    for h in numba.prange(H):
        terms = np.empty((n, Bsz), dtype=np.float32)  # Re(C x) per mode and sequence
        for i in range(T):
            t = t0 + i
            ut = u[t, h]
            for j in range(n):
                a0, b0, c0 = A[h, 0, j], B[h, 0, j], C[h, 0, j]
                s0, z0 = scale[h, 0, j], zp[h, 0, j]
                xr, Rr, tj = x[h, 0, j], R[i, h, 0, j], terms[j]
                if P == 1:
                    for b in range(Bsz):
                        r0 = np.rint((a0 * xr[b] + b0 * ut[b]) / s0 + z0)
                        Rr[b] = min(max(r0, lo), hi)
                        xr[b] = (min(max(r0, qmin), qmax) - z0) * s0
                        tj[b] = c0 * xr[b]
                    continue
                a1, b1, c1 = A[h, 1, j], B[h, 1, j], C[h, 1, j]
                s1, z1 = scale[h, 1, j], zp[h, 1, j]
                xi, Ri = x[h, 1, j], R[i, h, 1, j]
                for b in range(Bsz):
                    x0, x1, uu = xr[b], xi[b], ut[b]
                    r0 = np.rint(((a0 * x0 - a1 * x1) + b0 * uu) / s0 + z0)
                    r1 = np.rint(((a0 * x1 + a1 * x0) + b1 * uu) / s1 + z1)
                    Rr[b] = min(max(r0, lo), hi)
                    Ri[b] = min(max(r1, lo), hi)
                    x0 = (min(max(r0, qmin), qmax) - z0) * s0
                    x1 = (min(max(r1, qmin), qmax) - z1) * s1
                    xr[b] = x0
                    xi[b] = x1
                    tj[b] = c0 * x0 - c1 * x1  # Re(C x) = Cr·xr − Ci·xi, as torch's product
            yt, total = y[t, h], _halving_sum(terms)
            for b in range(Bsz):
                yt[b] = total[b] * np.float32(P)


@numba.njit(cache=True)
def _halving_sum(terms):
    """``qssm.models.s4d.halving_sum`` over the first axis of ``terms`` (n, B), in place, for
    every column at once: the same additions in the same order (add the second half onto the
    first, an odd last row carried over).  Returns the (B,) row of sums."""
    m = terms.shape[0]
    while m > 1:
        half = m // 2
        for j in range(half):
            tj, tk = terms[j], terms[j + half]
            for b in range(terms.shape[1]):
                tj[b] = tj[b] + tk[b]
        if m % 2:
            terms[half, :] = terms[m - 1, :]
        m = half + m % 2
    return terms[0]


@numba.njit(cache=True, fastmath=True)
def _state(code, qmin, qmax, zp, scale):
    """A state part from its code, with the forward's float32 operations (the same value)."""
    return (min(max(np.float32(code), qmin), qmax) - zp) * scale


@numba.njit(cache=True, fastmath=True, parallel=True)
def _s4d_backward(R, before, t0, u, A, B, C, scale, zp, qmin, qmax, gy, carry, sums, gu):
    """BPTT of S4DScan over one block of timesteps t0 … t0+T−1, backwards, two steps at a time,
    in float32; channels run in parallel, the innermost loops over the batch.

    R (T, H, P, n, B) the block's saved codes (P = 2: real/imaginary parts; P = 1: S4D-Real),
    ``before`` (H, P, n, B) the codes of step t0 − 1 (unused at t0 = 0: x_{−1} = 0);
    u, gy, gu (L+1, H, B) float32, row L of u and gy zero; A, B, C, scale, zp (H, P, n)
    float32.  Each state is rebuilt from its codes (:func:`_state`), once per pair of steps
    for the step both use.  A block of odd length (only the last one: CHUNK is even) starts one
    step past its end, at step L, whose zero output gradient and carry give nothing but a
    zero row L of ``gu``.  Updated in place: ``carry`` (H, P, n, B) float32, ∂L/∂x_t through
    x_{t+1}, handed from block to block; ``sums`` (3, H, P, n) float64, the parts of ∂L/∂Ā,
    ∂L/∂B̄ and ∂L/∂C (torch's complex-gradient convention): each pair of steps' sum over the
    batch is taken in float32, then added in float64; ``gu`` rows t0 … t0+T−1: ∂L/∂u, summed
    over the modes in float32.  fastmath: sums may be reassociated (gradients are compared to
    float tolerance, not bit for bit)."""
    T, H, P, n, Bsz = R.shape
    k = np.float32(P)  # the readout is 2·Re(C x) for complex modes
    zero = np.float32(0)
    for h in numba.prange(H):
        g1, g2 = np.empty(Bsz, dtype=np.float32), np.empty(Bsz, dtype=np.float32)
        for i in range(T - 1 + T % 2, 0, -2):  # steps t and t − 1
            t = t0 + i
            R1 = R[min(i, T - 1)]  # codes of x_t (at i = T, any: its gradient is zero)
            R2, R3 = R[i - 1], (R[i - 2] if i > 1 else before)  # codes of x_{t−1}, x_{t−2}
            ahead = np.float32(1) if t > 1 else zero  # x_{−1} = 0
            u1, u2, gu1, gu2 = u[t, h], u[t - 1, h], gu[t, h], gu[t - 1, h]
            for b in range(Bsz):
                g1[b], g2[b] = k * gy[t, h, b], k * gy[t - 1, h, b]
                gu1[b], gu2[b] = zero, zero
            for j in range(n):
                a0, b0, c0 = A[h, 0, j], B[h, 0, j], C[h, 0, j]
                s0, z0 = scale[h, 0, j], zp[h, 0, j]
                w0 = ahead * s0  # the scale of x_{t−2}
                Q1, Q2, Q3, cr = R1[h, 0, j], R2[h, 0, j], R3[h, 0, j], carry[h, 0, j]
                sA0 = sA1 = sB0 = sB1 = sC0 = sC1 = zero
                if P == 1:
                    for b in range(Bsz):
                        r1, r2 = np.float32(Q1[b]), np.float32(Q2[b])
                        x1, x2 = _state(r1, qmin, qmax, z0, s0), _state(r2, qmin, qmax, z0, s0)
                        x3 = _state(Q3[b], qmin, qmax, z0, w0)
                        gx = g1[b] * c0 + cr[b]
                        gp = gx if (r1 >= qmin) & (r1 <= qmax) else zero  # clamp's gradient
                        gx = g2[b] * c0 + gp * a0  # step t − 1
                        hp = gx if (r2 >= qmin) & (r2 <= qmax) else zero
                        sA0 += gp * x2 + hp * x3
                        sB0 += gp * u1[b] + hp * u2[b]
                        sC0 += g1[b] * x1 + g2[b] * x2
                        gu1[b] += gp * b0
                        gu2[b] += hp * b0
                        cr[b] = hp * a0
                else:
                    a1, b1, c1 = A[h, 1, j], B[h, 1, j], C[h, 1, j]
                    s1, z1 = scale[h, 1, j], zp[h, 1, j]
                    w1 = ahead * s1
                    V1, V2, V3, ci = R1[h, 1, j], R2[h, 1, j], R3[h, 1, j], carry[h, 1, j]
                    for b in range(Bsz):
                        r1, r2 = np.float32(Q1[b]), np.float32(Q2[b])  # real parts
                        i1, i2 = np.float32(V1[b]), np.float32(V2[b])  # imaginary parts
                        x1, x2 = _state(r1, qmin, qmax, z0, s0), _state(r2, qmin, qmax, z0, s0)
                        y1, y2 = _state(i1, qmin, qmax, z1, s1), _state(i2, qmin, qmax, z1, s1)
                        x3, y3 = (
                            _state(Q3[b], qmin, qmax, z0, w0),
                            _state(V3[b], qmin, qmax, z1, w1),
                        )
                        gg, hh = g1[b], g2[b]
                        gx0 = gg * c0 + cr[b]  # g·conj(C) + carry
                        gx1 = -gg * c1 + ci[b]
                        gp0 = gx0 if (r1 >= qmin) & (r1 <= qmax) else zero  # clamp's gradient
                        gp1 = gx1 if (i1 >= qmin) & (i1 <= qmax) else zero
                        gx0 = hh * c0 + (gp0 * a0 + gp1 * a1)  # step t − 1: carry gp·conj(Ā)
                        gx1 = -hh * c1 + (gp1 * a0 - gp0 * a1)
                        hp0 = gx0 if (r2 >= qmin) & (r2 <= qmax) else zero
                        hp1 = gx1 if (i2 >= qmin) & (i2 <= qmax) else zero
                        sA0 += (gp0 * x2 + gp1 * y2) + (hp0 * x3 + hp1 * y3)  # gp·conj(x_{t−1})
                        sA1 += (gp1 * x2 - gp0 * y2) + (hp1 * x3 - hp0 * y3)
                        sB0 += gp0 * u1[b] + hp0 * u2[b]
                        sB1 += gp1 * u1[b] + hp1 * u2[b]
                        sC0 += gg * x1 + hh * x2  # g·conj(x)
                        sC1 -= gg * y1 + hh * y2
                        gu1[b] += gp0 * b0 + gp1 * b1  # Re(gp·conj(B̄))
                        gu2[b] += hp0 * b0 + hp1 * b1
                        cr[b] = hp0 * a0 + hp1 * a1
                        ci[b] = hp1 * a0 - hp0 * a1
                    sums[0, h, 1, j] += sA1
                    sums[1, h, 1, j] += sB1
                    sums[2, h, 1, j] += sC1
                sums[0, h, 0, j] += sA0
                sums[1, h, 0, j] += sB0
                sums[2, h, 0, j] += sC0
