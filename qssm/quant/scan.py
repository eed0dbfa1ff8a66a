"""Fast quantized recurrences for QAT: one autograd node per sequence instead of ~10 per step.

The plain recurrent loop builds an autograd graph of L × (complex multiply, add, divide, round,
clamp, multiply, readout) nodes and keeps every intermediate alive for the backward pass; at
L = 784 that costs seconds per batch and gigabytes.  These functions run the same forward
arithmetic — the same torch ops on the same values, so the state codes are bit-identical — under
``no_grad``, keep only the integer state codes (int8 for ≤ 8 bits), and run a hand-written
backward-through-time with the straight-through estimator of Brevitas' ``IntQuant``: the gradient
passes the rounding unchanged, the clamp where the code is inside [qmin, qmax], and the scale gets
∂x/∂s = (code − zp) − [inside]·p/s.

``tests/quant/test_scan.py`` checks forward codes and every gradient against the plain loop.
"""

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

    Only the step-to-step dependence runs one timestep at a time (forward: 8 in-place ops on
    (B, H, n); backward: 3); the readout, B̄u and every reduction of the backward pass run on
    blocks of CHUNK timesteps.  Saved: the rounded codes before clamping, clipped to one past
    the range (int8 up to 7 bits, int16 above), from which the state and the clamp mask are
    rebuilt."""

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
        k = 2 if cplx else 1
        Bsz, L, _ = u.shape
        conjA, conjB, conjC = (t.conj().resolve_conj() for t in (A, B, C))  # not lazy views
        full = R.shape[2:]
        scale_, zp_ = scale.expand(full).contiguous(), zp.expand(full).contiguous()
        if cplx:  # −scale on the imaginary part: the codes give conj(x) directly
            scale_ = scale_ * torch.tensor([1.0, -1.0], dtype=scale_.dtype)
        has_zp = bool(torch.any(zp != 0))

        def states(lo: int, hi: int) -> torch.Tensor:  # conj(x_lo) … conj(x_{hi−1}); x_{−1} = 0
            codes = R[max(lo, 0) : hi].to(scale.dtype).clamp_(qmin, qmax)
            parts = (codes - zp_ if has_zp else codes).mul_(scale_)
            x = torch.view_as_complex(parts) if cplx else parts
            if lo < 0:
                x = torch.cat([torch.zeros_like(x[:1]), x])
            return x

        gA, gB, gC = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
        SX = torch.zeros_like(A)  # Σ ∂L/∂x_t · conj(x_t): the scale gradient's first part
        gu = torch.empty_like(u)
        carry = torch.zeros(Bsz, *A.shape, dtype=A.dtype)
        for c0 in reversed(range(0, L, CHUNK)):
            T = min(CHUNK, L - c0)
            Xc_all = states(c0 - 1, c0 + T)  # conj(x), (T + 1, B, H, n)
            Xc, Xc_prev = Xc_all[1:], Xc_all[:-1]
            Rc = R[c0 : c0 + T]
            mask = ((Rc >= qmin) & (Rc <= qmax)).to(scale.dtype)
            gyc = gy[:, c0 : c0 + T].transpose(0, 1) * k  # (T, B, H)
            GX = gyc[..., None] * conjC  # ∂L/∂x_t from the readout, then + carry
            GP = torch.empty_like(GX)
            for i in reversed(range(T)):
                GX[i] += carry
                torch.mul(_parts(GX[i]), mask[i], out=_parts(GP[i]))  # through the clamp
                carry = GP[i] * conjA
            gC += torch.einsum("tbh,tbhn->hn", gyc.to(Xc.dtype), Xc)
            gA += (GP * Xc_prev).sum((0, 1))
            gB += torch.einsum("tbhn,tbh->hn", GP, u[:, c0 : c0 + T].transpose(0, 1).to(GP.dtype))
            gu[:, c0 : c0 + T] = torch.einsum("tbhn,hn->tbh", GP, conjB).real.transpose(0, 1)
            SX += (GX * Xc).sum((0, 1))
        # ∂x/∂s = (code − zp) − [inside]·p/s summed against ∂L/∂x: Σ gx·x/s − Σ gp·p/s, and
        # Σ gp·conj(p) = conj(Ā)·gA + conj(B̄)·gB since p = Ā x_{t−1} + B̄ u_t
        s = scale.reshape(scale.shape[: A.ndim]) if cplx else scale
        gscale = (SX - conjA * gA - conjB * gB).real / s
        gscale = gscale.reshape(gscale.shape + (1,) * (scale.ndim - gscale.ndim))
        return gu, gA, gB, gC, gscale.sum_to_size(scale.shape), None, None, None


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
