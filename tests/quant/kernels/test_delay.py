"""The sparse delay line against the dense causal convolution of its one-hot kernel, computed
in float64 by autograd: values and both gradients to float32 rounding."""

import pytest
import torch
import torch.nn.functional as F

from qssm.models.mgrade import causal_conv
from qssm.quant.kernels.delay import DelayLine


def reference(u, w, d, J):
    """The dense convolution with kernel[h, j] = Σ_i w[h, i]·[d[h, i] = j], in float64."""
    kernel = torch.einsum("ht,htj->hj", w, F.one_hot(d, J).to(w.dtype))
    return causal_conv(u, kernel)


@pytest.mark.parametrize("threads", [1, 2])
def test_delay_line_is_the_dense_convolution_of_its_taps(threads):
    torch.manual_seed(4)
    B, L, H, J = 3, 50, 5, 12
    d = torch.randint(0, J, (H, 4))
    d[0] = torch.tensor([0, J - 1, 3, 3])  # no delay, the longest, two taps at one delay
    d[1, 0] = L + 5  # past the sequence: contributes nothing
    u = torch.randn(B, L, H, requires_grad=True)
    w = torch.randn(H, 4, requires_grad=True)
    g = torch.randn(B, L, H)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        y = DelayLine.apply(u, w, d)
        gu, gw = torch.autograd.grad(y, (u, w), g)
    finally:
        torch.set_num_threads(previous)
    u64, w64 = u.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y64 = reference(u64, w64, d, L + 6)
    gu64, gw64 = torch.autograd.grad(y64, (u64, w64), g.double())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gu.double(), gu64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gw.double(), gw64, rtol=1e-6, atol=1e-5)
    assert (y[:, 0, 0] == w[0, 0] * u[:, 0, 0]).all()  # delay 0 at t = 0, by hand


def test_integer_delay_layer_runs_the_delay_line(monkeypatch):
    """An mGRADE layer with quantized delays takes the delay line, unless it keeps torch's
    convolution backward; both give the same values to float32 rounding."""
    from qssm.models.mgrade import DelayConv

    from .test_s4d import quantized

    torch.manual_seed(0)
    u = torch.randn(2, 30, 4)
    conv = quantized(DelayConv(4, 16, 2, 0.5), {"default": {"bits": 8}}, u)
    assert conv.integer_delays
    calls = []
    monkeypatch.setattr(DelayLine, "apply", lambda *a, f=DelayLine.apply: calls.append(1) or f(*a))
    y = conv(u)
    conv.torch_backward = True
    y_dense = conv(u)
    assert calls == [1]
    torch.testing.assert_close(y, y_dense, rtol=1e-6, atol=1e-6)
