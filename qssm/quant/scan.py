"""Fast quantized recurrences for QAT: one autograd node per sequence instead of ~10 per step.

The plain recurrent loop builds an autograd graph of L × (complex multiply, add, divide, round,
clamp, multiply, readout) nodes and keeps every intermediate alive for the backward pass; at
L = 784 that costs seconds per batch and gigabytes.  These functions run the same forward
arithmetic — the same torch ops on the same values, so the state codes are bit-identical — under
``no_grad``, keep only the integer state codes (int8 for ≤ 8 bits), and run a hand-written
backward-through-time (for S4D one numba kernel, a single pass over time in float64) with the
straight-through estimator of Brevitas' ``IntQuant``: the gradient
passes the rounding unchanged, the clamp where the code is inside [qmin, qmax], and the scale gets
∂x/∂s = (code − zp) − [inside]·p/s.

``tests/quant/test_scan.py`` checks forward codes and every gradient against the plain loop.
"""

import numba
import numpy as np
import torch


def _code_dtype(qmin: int, qmax: int) -> torch.dtype:
    for dtype in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= qmin and qmax <= info.max:
            return dtype
    return torch.float32


def _parts(z: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(z) if z.is_complex() else z


def _quant(p: torch.Tensor, scale, zp, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, x) as ``fake_quant`` computes them, on real parts (…, 2) or real values."""
    codes = torch.clamp(torch.round(p / scale + zp), qmin, qmax)
    return codes, (codes - zp) * scale


def _ste(g: torch.Tensor, p: torch.Tensor, code: torch.Tensor, scale, zp, qmin, qmax):
    """Gradient of ``fake_quant`` at p (parts): (∂L/∂p, ∂L/∂scale per element)."""
    r = torch.round(p / scale + zp)
    inside = ((r >= qmin) & (r <= qmax)).to(g.dtype)
    return g * inside, g * ((code - zp) - inside * p / scale)


CHUNK = 4  # timesteps per vectorized block (readout, reductions of the backward pass)


class S4DScan(torch.autograd.Function):
    """y_t = readout(x_t), x_t = Q(Ā x_{t−1} + B̄ u_t) for a real or complex diagonal S4D.

    u (B, L, H); Ā, B̄, C (H, n) real or complex; scale, zp broadcast against the state parts
    (H, n[, 1]).  Returns y (B, L, H) without the D term.

    Forward: 8 in-place torch ops per timestep on (B, H, n), the readout and B̄u on blocks of
    CHUNK timesteps.  Saved: the rounded codes before clamping, clipped to one past the range
    (int8 up to 7 bits, int16 above), from which the backward kernel rebuilds each state and its
    clamp mask.  (A numba forward was tried: scalar loops were slower than torch's vector ops.)"""

    @staticmethod
    def forward(ctx, u, A, B, C, scale, zp, qmin, qmax):
        Bsz, L, _ = u.shape
        cplx, has_zp = A.is_complex(), bool(torch.any(zp != 0))
        k = 2 if cplx else 1
        x = torch.zeros(Bsz, *A.shape, dtype=A.dtype)
        R = torch.empty((L, *_parts(x).shape), dtype=_code_dtype(qmin - 1, qmax + 1))
        full = _parts(x).shape[1:]  # a (H, n, 1) scale broadcast over re/im is 10× slower
        scale_, zp_ = scale.expand(full).contiguous(), zp.expand(full).contiguous()
        y = torch.empty(Bsz, L, A.shape[0], dtype=u.dtype)
        X = torch.empty(CHUNK, *x.shape, dtype=A.dtype)
        for c0 in range(0, L, CHUNK):
            T = min(CHUNK, L - c0)
            BU = B * u[:, c0 : c0 + T].transpose(0, 1)[..., None]  # (T, B, H, n)
            for i in range(T):
                p = A * x
                p += BU[i]
                r = _parts(p).div_(scale_)
                if has_zp:
                    r += zp_
                R[c0 + i].copy_(r.round_().clamp_(qmin - 1, qmax + 1))
                r.clamp_(qmin, qmax)
                if has_zp:
                    r -= zp_
                torch.mul(r, scale_, out=_parts(X[i]))
                x = X[i]
            y[:, c0 : c0 + T] = ((C * X[:T]).sum(-1).real * k).transpose(0, 1)
            x = x.clone()  # X is reused by the next block
        ctx.save_for_backward(u, A, B, C, scale, zp, R)
        ctx.q = (qmin, qmax)
        return y

    @staticmethod
    def backward(ctx, gy):
        u, A, B, C, scale, zp, R = ctx.saved_tensors
        qmin, qmax = ctx.q
        cplx = A.is_complex()

        def parts(t: torch.Tensor) -> np.ndarray:  # (H, n) → (H, n, 2 or 1) float64
            t = t.detach()
            return (torch.view_as_real(t) if cplx else t[..., None]).double().numpy()

        full = (*A.shape, 2 if cplx else 1)

        def grid(t: torch.Tensor) -> np.ndarray:  # a scale or zero point → (H, n, P) float64
            t = t.detach().double()
            return (t if cplx else t[..., None]).expand(full).contiguous().numpy()

        gu, gA, gB, gC, SX = _s4d_backward(
            R.numpy() if cplx else R.numpy()[..., None],
            u.detach().contiguous().numpy(),
            parts(A),
            parts(B),
            parts(C),
            grid(scale),
            grid(zp),
            qmin,
            qmax,
            gy.detach().contiguous().numpy(),
            2.0 if cplx else 1.0,
        )
        gA, gB, gC, SX = (
            torch.view_as_complex(torch.from_numpy(g)) if cplx else torch.from_numpy(g)[..., 0]
            for g in (gA, gB, gC, SX)
        )
        # ∂x/∂s = (code − zp) − [inside]·p/s summed against ∂L/∂x: Σ gx·x/s − Σ gp·p/s, and
        # Σ gp·conj(p) = conj(Ā)·gA + conj(B̄)·gB since p = Ā x_{t−1} + B̄ u_t
        A64, B64 = A.detach().to(gA.dtype), B.detach().to(gB.dtype)
        s = scale.detach().double().reshape(scale.shape[: A.ndim]) if cplx else scale.double()
        gscale = (SX - A64.conj() * gA - B64.conj() * gB).real / s
        gscale = gscale.reshape(gscale.shape + (1,) * (scale.ndim - gscale.ndim))
        return (
            torch.from_numpy(gu).to(u.dtype),
            gA.to(A.dtype),
            gB.to(B.dtype),
            gC.to(C.dtype),
            gscale.sum_to_size(scale.shape).to(scale.dtype),
            None,
            None,
            None,
        )


@numba.njit(cache=True)
def _s4d_backward(R, u, A, B, C, scale, zp, qmin, qmax, gy, k):
    """BPTT of S4DScan in one pass over time (t outer, so every array is read in order).

    R (L, B, H, n, P) saved codes (P = 2: real/imaginary parts; P = 1: S4D-Real), u, gy (B, L, H),
    A, B, C, scale, zp (H, n, P).  Returns ∂L/∂u and, as parts, ∂L/∂Ā, ∂L/∂B̄, ∂L/∂C and
    SX = Σ ∂L/∂x_t · conj(x_t) (torch's complex-gradient convention)."""
    L, Bsz, H, n, P = R.shape
    gu = np.zeros((Bsz, L, H))
    gA, gB, gC, SX = (
        np.zeros((H, n, P)),
        np.zeros((H, n, P)),
        np.zeros((H, n, P)),
        np.zeros((H, n, P)),
    )
    carry = np.zeros((Bsz, H, n, P))  # ∂L/∂x_t through x_{t+1}
    for t in range(L - 1, -1, -1):
        for b in range(Bsz):
            for h in range(H):
                g, uu, acc = k * gy[b, t, h], u[b, t, h], 0.0
                for j in range(n):
                    r0 = R[t, b, h, j, 0]
                    x0 = (min(max(r0, qmin), qmax) - zp[h, j, 0]) * scale[h, j, 0]
                    m0 = 1.0 if qmin <= r0 <= qmax else 0.0  # the clamp passes the gradient
                    p0 = 0.0
                    if t > 0:
                        p0 = (min(max(R[t - 1, b, h, j, 0], qmin), qmax) - zp[h, j, 0]) * scale[
                            h, j, 0
                        ]
                    if P == 1:
                        gx0 = g * C[h, j, 0] + carry[b, h, j, 0]
                        gC[h, j, 0] += g * x0
                        SX[h, j, 0] += gx0 * x0
                        gp0 = gx0 * m0
                        gA[h, j, 0] += gp0 * p0
                        gB[h, j, 0] += gp0 * uu
                        acc += gp0 * B[h, j, 0]
                        carry[b, h, j, 0] = gp0 * A[h, j, 0]
                        continue
                    r1 = R[t, b, h, j, 1]
                    x1 = (min(max(r1, qmin), qmax) - zp[h, j, 1]) * scale[h, j, 1]
                    m1 = 1.0 if qmin <= r1 <= qmax else 0.0
                    p1 = 0.0
                    if t > 0:
                        p1 = (min(max(R[t - 1, b, h, j, 1], qmin), qmax) - zp[h, j, 1]) * scale[
                            h, j, 1
                        ]
                    gx0 = g * C[h, j, 0] + carry[b, h, j, 0]  # g·conj(C) + carry
                    gx1 = -g * C[h, j, 1] + carry[b, h, j, 1]
                    gC[h, j, 0] += g * x0  # g·conj(x)
                    gC[h, j, 1] -= g * x1
                    SX[h, j, 0] += gx0 * x0 + gx1 * x1  # gx·conj(x)
                    SX[h, j, 1] += gx1 * x0 - gx0 * x1
                    gp0, gp1 = gx0 * m0, gx1 * m1
                    gA[h, j, 0] += gp0 * p0 + gp1 * p1  # gp·conj(x_{t−1})
                    gA[h, j, 1] += gp1 * p0 - gp0 * p1
                    gB[h, j, 0] += gp0 * uu
                    gB[h, j, 1] += gp1 * uu
                    acc += gp0 * B[h, j, 0] + gp1 * B[h, j, 1]  # Re(gp·conj(B̄))
                    carry[b, h, j, 0] = gp0 * A[h, j, 0] + gp1 * A[h, j, 1]  # gp·conj(Ā)
                    carry[b, h, j, 1] = gp1 * A[h, j, 0] - gp0 * A[h, j, 1]
                gu[b, t, h] = acc
    return gu, gA, gB, gC, SX


class GateScan(torch.autograd.Function):
    """h_t = Q(keep_t ⊙ h_{t−1} + write_t): the minGRU recurrence, (B, L, H) → (B, L, H).
    Without a scale the state is analog (no quantization)."""

    @staticmethod
    def forward(ctx, keep, write, scale, zp, qmin, qmax):
        Bsz, L, H = keep.shape
        quantized = scale is not None
        codes = torch.empty((L, Bsz, H), dtype=_code_dtype(qmin, qmax)) if quantized else None
        hs = torch.empty_like(keep)
        h = torch.zeros(Bsz, H, dtype=keep.dtype)
        for t in range(L):
            h = keep[:, t] * h + write[:, t]
            if quantized:
                code, h = _quant(h, scale, zp, qmin, qmax)
                codes[t] = code
            hs[:, t] = h
        if quantized:  # the states are rebuilt from their codes
            ctx.save_for_backward(keep, write, codes, scale, zp)
        else:
            ctx.save_for_backward(keep, hs)
        ctx.q = (qmin, qmax, quantized)
        return hs

    @staticmethod
    def backward(ctx, gh_out):
        qmin, qmax, quantized = ctx.q
        if quantized:
            keep, write, codes, scale, zp = ctx.saved_tensors
            gscale = torch.zeros_like(gh_out[:, 0])  # (B, H), reduced to the scale's shape
        else:
            keep, hs = ctx.saved_tensors

        def state(t):
            if t < 0:
                return torch.zeros_like(keep[:, 0])
            return (codes[t].to(keep.dtype) - zp) * scale if quantized else hs[:, t]

        gkeep, gwrite = torch.empty_like(keep), torch.empty_like(keep)
        carry = torch.zeros_like(keep[:, 0])
        for t in range(keep.shape[1] - 1, -1, -1):
            h_prev = state(t - 1)
            gp = gh_out[:, t] + carry  # ∂L/∂h_t
            if quantized:
                p = keep[:, t] * h_prev + write[:, t]
                gp, gs = _ste(gp, p, codes[t].to(keep.dtype), scale, zp, qmin, qmax)
                gscale += gs
            gkeep[:, t] = gp * h_prev
            gwrite[:, t] = gp
            carry = gp * keep[:, t]
        if not quantized:
            return gkeep, gwrite, None, None, None, None
        return gkeep, gwrite, gscale.sum_to_size(scale.shape), None, None, None
