"""The delay convolution's backward kernels against autograd of torch's conv1d."""

import pytest
import torch

from qssm.models.mgrade import _conv1d, causal_conv


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("J", [5, 64])  # a kernel longer than the sequence too
def test_causal_conv_gradients_match_conv1d(dtype, J):
    g = torch.Generator().manual_seed(9)
    u = torch.randn(3, 40, 6, generator=g, dtype=dtype).requires_grad_()
    k = torch.randn(6, J, generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(3, 40, 6, generator=g, dtype=dtype)
    results = []
    for conv in (causal_conv, _conv1d):
        y = conv(u, k)
        results.append((y.detach(), *torch.autograd.grad((y * w).sum(), (u, k))))
    (y, gu, gk), (y_ref, gu_ref, gk_ref) = results
    assert torch.equal(y, y_ref) and gu.dtype == gk.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(gu, gu_ref, **tol)
    torch.testing.assert_close(gk, gk_ref, **tol)
    # the causal structure by hand: y[t] = Σ_j k[j] u[t − j]
    t, h = 30, 2
    by_hand = sum(k[h, j] * u[1, t - j, h] for j in range(min(J, t + 1)))
    torch.testing.assert_close(y[1, t, h], by_hand.detach())
