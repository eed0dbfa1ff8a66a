"""The quantized minGRU recurrence as one autograd node (torch ops, a hand-written BPTT)."""

import torch

from . import code_dtype


class QuantGateScan(torch.autograd.Function):
    """h_t = Q(keep_t ⊙ h_{t−1} + write_t): the minGRU recurrence with its state quantized every
    step, (B, L, H) → (B, L, H).  Only the state codes are saved; the backward pass rebuilds the
    states from them."""

    @staticmethod
    def forward(ctx, keep, write, scale, zp, qmin, qmax):
        Bsz, L, H = keep.shape
        codes = torch.empty((L, Bsz, H), dtype=code_dtype(qmin, qmax))
        hs = torch.empty_like(keep)
        h = torch.zeros(Bsz, H, dtype=keep.dtype)
        for t in range(L):  # fake_quant's arithmetic
            code = torch.clamp(torch.round((keep[:, t] * h + write[:, t]) / scale + zp), qmin, qmax)
            h = (code - zp) * scale
            codes[t] = code
            hs[:, t] = h
        ctx.save_for_backward(keep, write, codes, scale, zp)
        ctx.q = (qmin, qmax)
        return hs

    @staticmethod
    def backward(ctx, gh_out):
        qmin, qmax = ctx.q
        keep, write, codes, scale, zp = ctx.saved_tensors
        gscale = torch.zeros_like(gh_out[:, 0])  # (B, H), reduced to the scale's shape
        gkeep, gwrite = torch.empty_like(keep), torch.empty_like(keep)
        carry = torch.zeros_like(keep[:, 0])
        for t in range(keep.shape[1] - 1, -1, -1):
            h_prev = (
                (codes[t - 1].to(keep.dtype) - zp) * scale if t > 0 else torch.zeros_like(carry)
            )
            gp = gh_out[:, t] + carry  # ∂L/∂h_t
            p = keep[:, t] * h_prev + write[:, t]  # fake_quant's straight-through gradients at p
            r = torch.round(p / scale + zp)
            inside = ((r >= qmin) & (r <= qmax)).to(gp.dtype)
            gscale += gp * ((codes[t].to(keep.dtype) - zp) - inside * p / scale)
            gp = gp * inside
            gkeep[:, t] = gp * h_prev
            gwrite[:, t] = gp
            carry = gp * keep[:, t]
        return gkeep, gwrite, gscale.sum_to_size(scale.shape), None, None, None
