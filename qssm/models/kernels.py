"""numba kernels of the minGRU: its recurrence, its hardware gate and its comparator.

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
tensor where torch makes two to five, with the same operations on the same values.
``tests/models/test_mingru.py`` checks every kernel bit for bit against the torch ops.
"""

import numba
import numpy as np
import torch

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
        z, cand, h = ctx.saved_tensors
        gz, gcand = torch.empty_like(h), torch.empty_like(h)
        numba_threads()
        _scan_backward(
            as_array(z.to(h.dtype)), as_array(cand.to(h.dtype)), h.numpy(),
            as_array(gh.to(h.dtype)), gz.numpy(), gcand.numpy(),
        )  # fmt: skip
        return gz.to(z.dtype), gcand.to(cand.dtype)


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
        carry = np.zeros(H, dtype=h.dtype)  # ∂L/∂h_t through h_{t+1}
        zeros = np.zeros(H, dtype=h.dtype)
        for t in range(L - 1, -1, -1):
            zt, ct, gt, gzt, gct = z[b, t], cand[b, t], gh[b, t], gz[b, t], gcand[b, t]
            hp = h[b, t - 1] if t > 0 else zeros
            for j in range(H):
                g = gt[j] + carry[j] if t < L - 1 else gt[j]
                carry[j] = g * (one - zt[j])
                gzt[j] = -(g * hp[j]) + g * ct[j]
                gct[j] = g * zt[j]


def elementwise(kernel, *tensors: torch.Tensor) -> torch.Tensor:
    """``kernel(*flat inputs, flat output)`` over tensors of one shape and dtype → the output."""
    out = torch.empty_like(tensors[0], memory_format=torch.contiguous_format)
    numba_threads()
    kernel(*(as_array(t).reshape(-1) for t in tensors), out.numpy().reshape(-1))
    return out


BLOCK = 1 << 14  # elements per parallel chunk of the elementwise kernels


@numba.njit(cache=True, parallel=True, error_model="numpy")
def hard_sigmoid_forward(x, out):
    """out = clamp(x / 4 + ½, 0, 1), as torch computes it: divide, add, clamp."""
    zero, half, one, four = np.array([0, 0.5, 1, 4], dtype=x.dtype)
    for c in numba.prange((x.size + BLOCK - 1) // BLOCK):
        for i in range(c * BLOCK, min(x.size, (c + 1) * BLOCK)):
            out[i] = min(max(x[i] / four + half, zero), one)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def hard_sigmoid_backward(x, g, out):
    """out = where(0 ≤ x / 4 + ½ ≤ 1, g, 0) / 4: the clamp's, the add's and the division's
    gradients as autograd applies them."""
    zero, half, one, four = np.array([0, 0.5, 1, 4], dtype=x.dtype)
    for c in numba.prange((x.size + BLOCK - 1) // BLOCK):
        for i in range(c * BLOCK, min(x.size, (c + 1) * BLOCK)):
            p = x[i] / four + half
            out[i] = (g[i] if (p >= zero) & (p <= one) else zero) / four


@numba.njit(cache=True, parallel=True, error_model="numpy")
def heaviside_forward(x, out):
    """out = [x > 0]."""
    zero, one = np.array([0, 1], dtype=x.dtype)
    for c in numba.prange((x.size + BLOCK - 1) // BLOCK):
        for i in range(c * BLOCK, min(x.size, (c + 1) * BLOCK)):
            out[i] = one if x[i] > zero else zero


@numba.njit(cache=True, parallel=True, error_model="numpy")
def heaviside_backward(x, g, out):
    """out = g · [|x| < 1], the straight-through window (g · 0 keeps the sign of a zero)."""
    zero, one = np.array([0, 1], dtype=x.dtype)
    for c in numba.prange((x.size + BLOCK - 1) // BLOCK):
        for i in range(c * BLOCK, min(x.size, (c + 1) * BLOCK)):
            out[i] = g[i] * (one if abs(x[i]) < one else zero)
