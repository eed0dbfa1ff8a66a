"""Fast autograd nodes of the float models: the minGRU's recurrence, its hardware gate and
comparator (numba kernels), and mGRADE's delay convolution (torch convolutions).

    h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t

The step loop (:func:`qssm.models.mingru.gate_scan` on ``1 − z`` and ``z ⊙ h̃``) builds two
autograd nodes and runs a few small torch ops per timestep; at L = 784 that overhead was most of
a training step.  :func:`gru_scan` runs the same arithmetic as one autograd node — ``1 − z``,
``z · h̃``, one multiply then one add (no fused multiply-add), in the inputs' dtype — so its
states are bit-identical to the step loop's.  Its backward pass makes the products and two-term
sums autograd makes (∂L/∂write_t = g_t, ∂L/∂keep_t = g_t h_{t−1}, g_{t−1} += g_t keep_t,
∂L/∂z = −∂L/∂keep + ∂L/∂write · h̃, ∂L/∂h̃ = ∂L/∂write · z), so its gradients are bit-identical
too.  The scan kernels work in the tensors' own (B, L, H) layout: one sequence per thread, the
innermost loop over the H channels of one timestep — independent recurrences, contiguous in
memory, so it vectorizes with no transposed copies.

The elementwise kernels (hard sigmoid, comparator, and their gradients) make one pass over a
tensor where torch makes two to five, with the same operations on the same values;
:class:`HardGRUScan` makes the hardware layer's gate, recurrence and comparator one pass.
``tests/models/test_mingru.py`` checks every kernel bit for bit against the torch ops.
"""

import numba
import numpy as np
import torch
import torch.nn.functional as F

# numba's OpenMP layer would share libgomp with torch and reset torch's thread count
numba.config.THREADING_LAYER = "workqueue"


def numba_threads() -> None:
    """numba's threads follow torch's (``torch.set_num_threads``, ``OMP_NUM_THREADS``)."""
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def as_array(t: torch.Tensor) -> np.ndarray:
    """A contiguous numpy view (or copy) of a CPU tensor, without its autograd history."""
    return t.detach().contiguous().numpy()


class GRUScan(torch.autograd.Function):
    """z, h̃ (B, L, H) → h (B, L, H)."""

    @staticmethod
    def forward(ctx, z, cand):
        dtype = torch.promote_types(z.dtype, cand.dtype)
        h = torch.empty(z.shape, dtype=dtype)
        numba_threads()
        _scan_forward(as_array(z.to(dtype)), as_array(cand.to(dtype)), h.numpy())
        ctx.save_for_backward(z, cand, h)
        return h

    @staticmethod
    def backward(ctx, gh):
        return _scan_grads(_scan_backward, *ctx.saved_tensors, gh)


def _scan_grads(kernel, first, cand, h, g) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂first, ∂L/∂h̃) of a scan node from its backward ``kernel(first, h̃, states, g,
    ∂first, ∂h̃)``, run in the states' dtype."""
    g_first, g_cand = torch.empty_like(h), torch.empty_like(h)
    numba_threads()
    kernel(
        as_array(first.to(h.dtype)), as_array(cand.to(h.dtype)), h.numpy(),
        as_array(g.to(h.dtype)), g_first.numpy(), g_cand.numpy(),
    )  # fmt: skip
    return g_first.to(first.dtype), g_cand.to(cand.dtype)


def gru_scan(z: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """The minGRU recurrence h_t = (1 − z_t) h_{t−1} + z_t h̃_t from gate z and candidate h̃
    (B, L, H), h_{−1} = 0 → the states (B, L, H)."""
    return GRUScan.apply(z, cand)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _scan_forward(z, cand, h):
    """h[b, t] = (1 − z[b, t]) · h[b, t − 1] + z[b, t] · cand[b, t], h[b, −1] = 0.  Constants
    are typed as the arrays (a bare 1 would widen float32 arithmetic to float64)."""
    Bsz, L, H = z.shape
    one = np.ones(1, h.dtype)[0]
    for b in numba.prange(Bsz):
        prev = np.zeros(H, dtype=h.dtype)
        for t in range(L):
            zt, ct, ht = z[b, t], cand[b, t], h[b, t]
            for j in range(H):
                prev[j] = (one - zt[j]) * prev[j] + zt[j] * ct[j]
                ht[j] = prev[j]


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _scan_backward(z, cand, h, gh, gz, gcand):
    """BPTT of :func:`_scan_forward` (see the module docstring); all (B, L, H)."""
    Bsz, L, H = z.shape
    one = np.ones(1, h.dtype)[0]
    for b in numba.prange(Bsz):
        carry = np.full(H, -(one - one))  # ∂L/∂h_t through h_{t+1}; −0 + g is g, signs too
        zeros = np.zeros(H, dtype=h.dtype)
        for t in range(L - 1, -1, -1):
            zt, ct, gt, gzt, gct = z[b, t], cand[b, t], gh[b, t], gz[b, t], gcand[b, t]
            hp = h[b, t - 1] if t > 0 else zeros
            for j in range(H):
                g = gt[j] + carry[j]
                carry[j] = g * (one - zt[j])
                gzt[j] = -(g * hp[j]) + g * ct[j]
                gct[j] = g * zt[j]


def elementwise(kernel, *tensors: torch.Tensor) -> torch.Tensor:
    """``kernel(*flat inputs, flat output)`` over tensors of one shape and dtype → the output."""
    out = torch.empty_like(tensors[0], memory_format=torch.contiguous_format)
    numba_threads()
    kernel(*(as_array(t).reshape(-1) for t in tensors), out.numpy().reshape(-1))
    return out


@numba.njit(inline="always")
def hard_sigmoid_value(x, zero, half, one, four):
    """clamp(x / 4 + ½, 0, 1), as torch computes it: divide, add, clamp."""
    return min(max(x / four + half, zero), one)


@numba.njit(inline="always")
def hard_sigmoid_grad(x, g, zero, half, one, four):
    """where(0 ≤ x / 4 + ½ ≤ 1, g, 0) / 4: the clamp's, the add's and the division's gradients
    as autograd applies them."""
    p = x / four + half
    return (g if (p >= zero) & (p <= one) else zero) / four


@numba.njit(inline="always")
def window_grad(x, g, zero, one):
    """The comparator's straight-through gradient g · [|x| < 1] (g · 0 keeps the sign of a
    zero)."""
    return g * (one if abs(x) < one else zero)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def hard_sigmoid_forward(x, out):
    zero, half, one, four = np.array([0, 0.5, 1, 4], dtype=x.dtype)
    for i in numba.prange(x.size):
        out[i] = hard_sigmoid_value(x[i], zero, half, one, four)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def hard_sigmoid_backward(x, g, out):
    zero, half, one, four = np.array([0, 0.5, 1, 4], dtype=x.dtype)
    for i in numba.prange(x.size):
        out[i] = hard_sigmoid_grad(x[i], g[i], zero, half, one, four)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def heaviside_forward(x, out):
    """out = [x > 0]."""
    zero, one = np.array([0, 1], dtype=x.dtype)
    for i in numba.prange(x.size):
        out[i] = one if x[i] > zero else zero


@numba.njit(cache=True, parallel=True, error_model="numpy")
def heaviside_backward(x, g, out):
    zero, one = np.array([0, 1], dtype=x.dtype)
    for i in numba.prange(x.size):
        out[i] = window_grad(x[i], g[i], zero, one)


class HardGRUScan(torch.autograd.Function):
    """The hardware minGRU layer after its projections, as one autograd node: hard-sigmoid gate
    z = clamp(pre / 4 + ½, 0, 1), the recurrence h_t = (1 − z_t) h_{t−1} + z_t h̃_t and the
    comparator [h_t > 0] — pre, h̃ (B, L, H) → binary outputs (B, L, H).  The same operations
    on the same values as ``Heaviside(gru_scan(hard_sigmoid(pre), h̃))`` forward and backward,
    so values and gradients are bit-identical, in one pass each way instead of three; saved:
    pre, h̃ and the states."""

    @staticmethod
    def forward(ctx, pre, cand):
        dtype = torch.promote_types(pre.dtype, cand.dtype)
        pre_, cand_ = as_array(pre.to(dtype)), as_array(cand.to(dtype))
        h, out = torch.empty(pre.shape, dtype=dtype), torch.empty(pre.shape, dtype=dtype)
        numba_threads()
        _hard_forward(pre_, cand_, h.numpy(), out.numpy())
        ctx.save_for_backward(pre, cand, h)
        return out

    @staticmethod
    def backward(ctx, gout):
        return _scan_grads(_hard_backward, *ctx.saved_tensors, gout)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _hard_forward(pre, cand, h, out):
    Bsz, L, H = pre.shape
    zero, half, one, four = np.array([0, 0.5, 1, 4], dtype=h.dtype)
    for b in numba.prange(Bsz):
        prev = np.zeros(H, dtype=h.dtype)
        for t in range(L):
            pt, ct, ht, ot = pre[b, t], cand[b, t], h[b, t], out[b, t]
            for j in range(H):
                z = hard_sigmoid_value(pt[j], zero, half, one, four)
                prev[j] = (one - z) * prev[j] + z * ct[j]
                ht[j] = prev[j]
                ot[j] = one if prev[j] > zero else zero


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _hard_backward(pre, cand, h, gout, gpre, gcand):
    """The comparator's window, :func:`_scan_backward`'s step and the hard sigmoid's gradient,
    per element."""
    Bsz, L, H = pre.shape
    zero, half, one, four = np.array([0, 0.5, 1, 4], dtype=h.dtype)
    for b in numba.prange(Bsz):
        carry = np.full(H, -zero)  # ∂L/∂h_t through h_{t+1}; −0 + g is g, zeros' signs too
        zeros = np.zeros(H, dtype=h.dtype)
        for t in range(L - 1, -1, -1):
            pt, ct, ht, gt = pre[b, t], cand[b, t], h[b, t], gout[b, t]
            gpt, gct, hp = gpre[b, t], gcand[b, t], h[b, t - 1] if t > 0 else zeros
            for j in range(H):
                z = hard_sigmoid_value(pt[j], zero, half, one, four)
                g = window_grad(ht[j], gt[j], zero, one) + carry[j]
                carry[j] = g * (one - z)
                gct[j] = g * z
                gz = -(g * hp[j]) + g * ct[j]
                gpt[j] = hard_sigmoid_grad(pt[j], gz, zero, half, one, four)


class CausalConv(torch.autograd.Function):
    """y[b, t, h] = Σ_j k[h, j] u[b, t − j, h], u (B, L, H), k (H, J): forward as torch's
    depthwise ``conv1d`` computes it (the ops of ``qssm.models.mgrade.causal_conv``); backward
    as two more forward convolutions, which oneDNN runs several times faster than torch's
    depthwise convolution backward (most of an mGRADE training step) or a loop over the taps:
    ∂L/∂u[b, s, h] = Σ_j k[h, j] g[b, s + j, h] correlates g with the kernel, and
    ∂L/∂k[h, j] = Σ_{b, t} g[b, t, h] u[b, t − j, h] correlates u with each sequence's g as a
    kernel of its own (B·H groups), summed over the batch.  Gradients equal autograd's to float
    rounding (another summation order)."""

    @staticmethod
    def forward(ctx, u, kernel, conv):
        ctx.save_for_backward(u, kernel)
        return conv(u, kernel)

    @staticmethod
    def backward(ctx, g):
        u, kernel = ctx.saved_tensors
        dtype = torch.promote_types(u.dtype, kernel.dtype)
        (Bsz, L, H), J = u.shape, kernel.shape[-1]
        g_ = g.to(dtype).transpose(1, 2)  # (B, H, L)
        gu = gk = None
        if ctx.needs_input_grad[0]:
            k = kernel.detach().to(dtype).unsqueeze(1)  # (H, 1, J)
            gu = F.conv1d(F.pad(g_, (0, J - 1)), k, groups=H).transpose(1, 2).to(u.dtype)
        if ctx.needs_input_grad[1]:
            x = F.pad(u.detach().to(dtype).transpose(1, 2), (J - 1, 0))  # u[t − (J − 1)]
            x, w = x.reshape(1, Bsz * H, L + J - 1), g_.reshape(Bsz * H, 1, L)
            out = F.conv1d(x, w, groups=Bsz * H).reshape(Bsz, H, J)  # output j' is lag J − 1 − j'
            gk = out.sum(0).flip(-1).to(kernel.dtype)
        return gu, gk, None
